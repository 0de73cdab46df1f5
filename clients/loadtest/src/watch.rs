//! The `watch` scenario: N watchers over M connections watch pods in one
//! namespace while W writers create and delete pods of a given size, at a
//! given rate or as fast as they can. Reports events delivered per second,
//! writes per second, and delivery latency from a write's acknowledgement to
//! the event's arrival (sampled on a subset of watchers).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use futures::StreamExt;
use skiff::Resource;
use skiff::api::core::v1::{Container, Pod, PodSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::api::meta::v1::WatchCreateRequest;
use skiff::client::{Credentials, ResourceClient, connect};
use skiff::params::{ListParams, WatchParams};

use crate::report::{Latency, Report};
use crate::server::{Sampler, ServerArgs, ServerUnderTest};

/// Flags of `skiff-loadtest watch`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Number of watchers.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Number of connections the watchers share.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Number of writers.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// Writes per second in total, or "max".
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// How long writers write, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Size of each object in bytes (padded with an annotation).
    #[arg(long, default_value_t = 256)]
    pub object_size: usize,
    /// Label selector of the watchers (writers' pods carry app=loadtest).
    #[arg(long, default_value = "")]
    pub selector: String,
    /// Watchers whose every event is timed (latency is sampled on these).
    #[arg(long, default_value_t = 100)]
    pub sampled_watchers: usize,
    /// `skiff` (the API server) or `etcd://HOST:PORT`: the same load shape
    /// straight against etcd (watches on a key prefix, puts and deletes).
    #[arg(long, default_value = "skiff")]
    pub target: String,
    /// Open the watchers, write nothing, and report the server's memory
    /// per watch: its RSS growth divided by the number of watches.
    #[arg(long)]
    pub idle: bool,
    /// Open the watches on multiplexed streams (`WatchService.Watch`, one
    /// per connection, read by one task each) instead of one `WatchPods`
    /// call each. Both paths decode only what the figures need.
    #[arg(long)]
    pub multiplexed: bool,
    /// Process to sample when this tool starts no server (e.g. etcd's pid
    /// with `--target etcd://…`), for `--idle` and the CPU/RSS figures.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Records what was measured: the started server (and its storage) or `--target`.
fn set_target(r: &mut Report, args: &Args, started: bool, addr: &str) {
    if started {
        r.set("target", format!("skiff {addr}"));
        r.set("storage", args.server.storage.clone());
    } else {
        r.set("target", args.target.clone());
    }
}

/// RSS of `pid` once it has stopped moving (two readings 500 ms apart
/// within 64 KiB of each other, or the last of 20).
async fn settled_rss(pid: u32) -> Option<u64> {
    let mut last = crate::server::rss_bytes(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = crate::server::rss_bytes(pid)?;
        if now.abs_diff(last) < 64 * 1024 {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// A watcher's events (or a multiplexed stream's, of many watchers), as the
/// revisions they carry and whether the arrival is timed (a sampled
/// watcher's).
type Revisions = std::pin::Pin<Box<dyn futures::Stream<Item = Result<(u64, bool), String>> + Send>>;

/// Opens the watchers against etcd: `connections` clients, each serving its
/// share of watches on `prefix`.
async fn etcd_watchers(
    hostport: &str,
    prefix: &str,
    watchers: usize,
    connections: usize,
) -> anyhow::Result<Vec<Revisions>> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{hostport}"))
                .context("etcd's address")?
                .connect()
                .await
                .with_context(|| format!("connecting to etcd at {hostport}"))?,
        );
    }
    let bar = crate::progress(watchers as u64, "starting watchers");
    let mut out: Vec<Revisions> = Vec::new();
    for i in 0..watchers {
        let stream = crate::lite::etcd_watch_prefix(channels[i % connections].clone(), prefix)
            .await
            .context("opening an etcd watch")?;
        let revisions = stream.flat_map(|r| {
            let revs: Vec<Result<(u64, bool), String>> = match r {
                Ok(r) => {
                    let mut revs: Vec<_> =
                        r.revisions.into_iter().map(|rev| Ok((rev, true))).collect();
                    if let Some(why) = r.canceled {
                        revs.push(Err(format!("etcd canceled the watch: {why}")));
                    }
                    revs
                }
                Err(e) => vec![Err(e.to_string())],
            };
            futures::stream::iter(revs)
        });
        out.push(Box::pin(revisions));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

pub use skiff::duration::parse_duration;

/// Namespace the scenarios write in.
pub const NAMESPACE: &str = "loadtest";

/// A pod of about `size` bytes encoded.
pub fn pod(name: &str, size: usize) -> Pod {
    let mut p = Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: NAMESPACE.into(),
            labels: [("app".to_string(), "loadtest".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "busybox".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let base = prost::Message::encoded_len(&p);
    if size > base + 16 {
        p.meta_mut()
            .annotations
            .insert("pad".into(), "x".repeat(size - base - 16));
    }
    p
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let etcd = args.target.strip_prefix("etcd://").map(str::to_owned);
    let server = match &etcd {
        Some(_) => None,
        None => Some(ServerUnderTest::start(&args.server).await?),
    };
    let addr = server.as_ref().map(|s| s.addr.clone()).unwrap_or_default();
    let connections = args.connections.clamp(1, args.watchers.max(1));
    let delivered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sampled_pid = server.as_ref().and_then(|s| s.pid()).or(args.target_pid);
    if let Some(s) = &server {
        // Warm the server up (namespace, pod cache) before the baseline.
        crate::ensure_namespace(
            &skiff::client::Client::connect_to(&s.addr).await?,
            NAMESPACE,
        )
        .await?;
    }
    let rss_before = match (args.idle, sampled_pid) {
        (true, Some(pid)) => settled_rss(pid).await,
        _ => None,
    };
    let streams: Vec<Revisions> = match &etcd {
        Some(hostport) => {
            let prefix = format!("/loadtest-{}/", std::process::id());
            etcd_watchers(hostport, &prefix, args.watchers, connections).await?
        }
        None => skiff_watchers(&args, &addr, connections).await?,
    };
    if args.idle {
        let pid = sampled_pid.context(
            "--idle measures a process's memory: start the server here or give --target-pid",
        )?;
        let rss_after = settled_rss(pid).await;
        let mut r = Report::default();
        r.set("scenario", "watch-idle");
        set_target(&mut r, &args, server.is_some(), &addr);
        r.set("watchers", args.watchers);
        r.set("connections", connections);
        r.set("multiplexed", args.multiplexed);
        if let (Some(b), Some(a)) = (rss_before, rss_after) {
            r.set("rss_before", b);
            r.set("rss_after", a);
            r.set(
                "bytes_per_watch",
                (a as f64 - b as f64) / args.watchers.max(1) as f64,
            );
        }
        r.print(args.json);
        drop(streams);
        return Ok(());
    }
    let (stop_watchers, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        let delivered = delivered.clone();
        let errors = errors.clone();
        let sampled = i < args.sampled_watchers;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = s;
            let mut seen: Vec<(u64, Instant)> = Vec::new();
            // One stop future for the whole run: a new one per event would
            // cost a registration with the channel each time, on the load
            // generator's one core (it showed in the latency).
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            tokio::pin!(stop);
            loop {
                let ev = tokio::select! {
                    biased;
                    ev = s.next() => ev,
                    _ = &mut stop => break,
                };
                match ev {
                    Some(Ok((rv, timed))) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        if sampled && timed {
                            seen.push((rv, Instant::now()));
                        }
                    }
                    Some(Err(_)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    None => break,
                }
            }
            seen
        }));
    }

    // Writers.
    let per_writer_rate: Option<f64> = match args.rate.as_str() {
        "max" => None,
        r => Some(
            r.parse::<f64>().context("--rate is a number or max")? / args.writers.max(1) as f64,
        ),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(sampled_pid);
    let mut targets = Vec::new();
    for _ in 0..args.writers.clamp(1, 8) {
        targets.push(crate::write::Target::connect(&args.target, &addr).await?);
    }
    let started = Instant::now();
    let mut writers = Vec::new();
    let writers_n = args.writers;
    for w in 0..args.writers {
        let mut target = targets[w % targets.len()].clone();
        let stop = stop.clone();
        let writes = writes.clone();
        let size = args.object_size;
        writers.push(tokio::spawn(async move {
            let mut acks: Vec<(u64, Instant)> = Vec::new();
            let mut latency = Latency::new();
            let mut ticker = per_writer_rate.map(|r| crate::paced(r, w, writers_n));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let name = format!("w{w}-{i}");
                i += 1;
                let sent = Instant::now();
                let Ok(rv) = target.create(&name, size).await else {
                    continue;
                };
                latency.record(sent.elapsed());
                acks.push((rv, Instant::now()));
                writes.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let sent = Instant::now();
                if let Ok(rv) = target.delete(&name).await {
                    latency.record(sent.elapsed());
                    acks.push((rv, Instant::now()));
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            (acks, latency)
        }));
    }
    finish(
        args,
        addr,
        connections,
        server,
        started,
        writers,
        writes,
        delivered,
        errors,
        tasks,
        stop,
        stop_watchers,
        sampler,
    )
    .await
}

/// Opens the watchers against the API server.
async fn skiff_watchers(
    args: &Args,
    addr: &str,
    connections: usize,
) -> anyhow::Result<Vec<Revisions>> {
    crate::ensure_namespace(&skiff::client::Client::connect_to(addr).await?, NAMESPACE).await?;
    let admin = connect(addr, Credentials::none()).await?;
    let start_rv = Pod::list_in(
        admin.clone(),
        ListParams {
            namespace: NAMESPACE.into(),
            resource_version: "0".into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await?
    .list_meta()
    .resource_version;

    let mut transports = Vec::new();
    for _ in 0..connections {
        transports.push(connect(addr, Credentials::none()).await?);
    }
    let bar = crate::progress(args.watchers as u64, "starting watchers");
    if args.multiplexed {
        // Watcher i is watch i + 1 on connection i % connections.
        let mut creates = vec![Vec::new(); connections];
        for i in 0..args.watchers {
            creates[i % connections].push(WatchCreateRequest {
                watch_id: i as i64 + 1,
                kind: "pods".into(),
                namespace: NAMESPACE.into(),
                label_selector: args.selector.clone(),
                resource_version: start_rv.clone(),
                ..Default::default()
            });
        }
        let sampled = args.sampled_watchers as i64;
        let mut out = Vec::new();
        for (t, creates) in transports.into_iter().zip(creates) {
            let n = creates.len() as u64;
            out.push(multiplexed_revisions(t, creates, sampled).await?);
            bar.inc(n);
        }
        bar.finish_and_clear();
        return Ok(out);
    }
    let params = WatchParams {
        namespace: NAMESPACE.into(),
        label_selector: args.selector.clone(),
        resource_version: start_rv,
        ..Default::default()
    };
    let streams: Vec<_> = futures::stream::iter(0..args.watchers)
        .map(|i| {
            crate::lite::watch_pod_revisions(transports[i % connections].clone(), params.clone())
        })
        .buffer_unordered(64)
        .inspect(|_| bar.inc(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut out: Vec<Revisions> = Vec::new();
    for s in streams {
        let s = s.context("opening a watch")?;
        out.push(Box::pin(s.map(|e| {
            e.map(|(_, rv)| (rv, true))
                .map_err(|e| e.message().to_owned())
        })));
    }
    Ok(out)
}

/// One multiplexed stream carrying `creates`, once every watch on it is
/// established; arrivals of watches numbered up to `sampled` are timed.
async fn multiplexed_revisions(
    t: skiff::client::Transport,
    creates: Vec<WatchCreateRequest>,
    sampled: i64,
) -> anyhow::Result<Revisions> {
    let mut waiting = creates.len();
    let mut s = Box::pin(
        crate::lite::watch_multiplexed(t, creates)
            .await
            .context("opening a multiplexed watch")?,
    );
    while waiting > 0 {
        let r = s
            .next()
            .await
            .context("the multiplexed watch ended while opening")??;
        if r.canceled {
            let why = r.error.unwrap_or_default();
            anyhow::bail!("watch {} was refused: {why}", r.watch_id);
        }
        if r.created {
            waiting -= 1;
        }
    }
    Ok(Box::pin(s.filter_map(move |r| async move {
        match r {
            Ok(r) if r.canceled => Some(Err(format!(
                "watch {} ended: {}",
                r.watch_id,
                r.error.unwrap_or_default()
            ))),
            Ok(r) if r.has_object => Some(Ok((r.resource_version(), r.watch_id <= sampled))),
            Ok(_) => None,
            Err(e) => Some(Err(e.message().to_owned())),
        }
    })))
}

/// What a writer hands back: each acknowledgement (revision, when) and its
/// writes' latency.
type WriterResult = (Vec<(u64, Instant)>, Latency);

/// Waits out the run, drains deliveries and prints the report.
#[allow(clippy::too_many_arguments)]
async fn finish(
    args: Args,
    addr: String,
    connections: usize,
    server: Option<ServerUnderTest>,
    started: Instant,
    writers: Vec<tokio::task::JoinHandle<WriterResult>>,
    writes: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    stop_watchers: tokio::sync::watch::Sender<bool>,
    sampler: Sampler,
) -> anyhow::Result<()> {
    let bar = crate::progress(args.duration.as_secs().max(1), "running");
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let secs = started.elapsed().as_secs_f64();
        bar.set_position(secs as u64);
        bar.set_message(format!(
            "{:.0} writes/s, {:.0} events/s",
            writes.load(Ordering::Relaxed) as f64 / secs,
            delivered.load(Ordering::Relaxed) as f64 / secs
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let mut acks: HashMap<u64, Instant> = HashMap::new();
    let mut write_latency = Latency::new();
    for w in writers {
        let (a, l) = w.await?;
        acks.extend(a);
        write_latency.merge(&l);
    }
    let write_secs = started.elapsed().as_secs_f64();
    let total_writes = writes.load(Ordering::Relaxed);
    // Let deliveries drain: until the count stops moving for a second.
    let mut last = delivered.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(1)
        && started.elapsed() < args.duration + Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let delivery_secs = (started.elapsed() - quiet_since.elapsed())
        .as_secs_f64()
        .max(write_secs);
    bar.finish_and_clear();
    let (rss, peak_rss, cpu) = sampler.finish();
    let total_delivered = delivered.load(Ordering::Relaxed);
    let _ = stop_watchers.send(true);
    let mut latency = Latency::new();
    for t in tasks {
        if let Ok(seen) = t.await {
            for (rv, at) in seen {
                if let Some(ack) = acks.get(&rv) {
                    latency.record(at.saturating_duration_since(*ack));
                }
            }
        }
    }

    let mut r = Report::default();
    r.set("scenario", "watch");
    set_target(&mut r, &args, server.is_some(), &addr);
    r.set("watchers", args.watchers);
    r.set("connections", connections);
    r.set("writers", args.writers);
    r.set("object_size", args.object_size);
    r.set("duration_s", write_secs);
    r.set("writes", total_writes);
    r.set("writes_per_sec", total_writes as f64 / write_secs);
    r.set("events_delivered", total_delivered);
    r.set("events_per_sec", total_delivered as f64 / delivery_secs);
    r.set("events_expected", total_writes * args.watchers as u64);
    r.set("watch_errors", errors.load(Ordering::Relaxed));
    r.set("latency", latency.json());
    r.set("write_latency", write_latency.json());
    r.set_process("server", (rss, peak_rss, cpu));
    r.print(args.json);
    Ok(())
}
