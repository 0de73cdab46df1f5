//! The `write` scenario: W writers create, update and delete objects of a
//! given size, at a given rate or as fast as they can, against a Skiff API
//! server (pods) or — with `--target etcd://HOST:PORT` — straight against
//! etcd (put, put, delete of keys the same size), so one command measures
//! both. Reports operations per second and latency per operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use skiff::Resource;
use skiff::api::core::v1::Pod;
use skiff::client::{Credentials, ResourceClient, connect};
use skiff::params::DeleteParams;

use crate::report::{Latency, Report};
use crate::server::{Sampler, ServerArgs, ServerUnderTest};
use crate::watch::{NAMESPACE, parse_duration, pod};

/// Flags of `skiff-loadtest write`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Number of writers.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// Operations per second in total, or "max".
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// How long to write, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Size of each object in bytes.
    #[arg(long, default_value_t = 256)]
    pub object_size: usize,
    /// Operations each writer cycles through: create, update, delete
    /// (comma-separated; "create" alone leaves every object in place).
    #[arg(long, value_delimiter = ',', default_value = "create,update,delete")]
    pub ops: Vec<String>,
    /// `skiff` (the API server), `etcd://HOST:PORT` (etcd directly, creates
    /// as plain puts) or `etcd-txn://HOST:PORT` (creates as the transaction
    /// a Skiff create asks of etcd: put if absent).
    #[arg(long, default_value = "skiff")]
    pub target: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// What a writer writes to.
#[derive(Clone)]
pub enum Target {
    /// A Skiff API server.
    Skiff(skiff::client::Transport),
    /// etcd, under a key prefix; creates as transactions when `txn`.
    Etcd(Box<etcd_client::KvClient>, String, bool),
}

impl Target {
    /// Connects to `target` ("skiff" uses `server`).
    pub async fn connect(target: &str, server: &str) -> anyhow::Result<Self> {
        let (etcd, txn) = match (
            target.strip_prefix("etcd://"),
            target.strip_prefix("etcd-txn://"),
        ) {
            (Some(h), _) => (Some(h), false),
            (_, Some(h)) => (Some(h), true),
            _ => (None, false),
        };
        match etcd {
            Some(hostport) => {
                let client = etcd_client::Client::connect([format!("http://{hostport}")], None)
                    .await
                    .with_context(|| format!("connecting to etcd at {hostport}"))?;
                Ok(Self::Etcd(
                    Box::new(client.kv_client()),
                    format!("/loadtest-{}/", std::process::id()),
                    txn,
                ))
            }
            None if target == "skiff" => {
                Ok(Self::Skiff(connect(server, Credentials::none()).await?))
            }
            None => anyhow::bail!(
                "--target is skiff, etcd://HOST:PORT or etcd-txn://HOST:PORT, not {target:?}"
            ),
        }
    }

    fn is_etcd(&self) -> bool {
        matches!(self, Self::Etcd(..))
    }

    /// Creates object `name`; returns the revision it was written at.
    pub async fn create(&mut self, name: &str, size: usize) -> anyhow::Result<u64> {
        match self {
            Self::Skiff(t) => Ok(Pod::create_in(t.clone(), pod(name, size))
                .await?
                .resource_version()),
            Self::Etcd(kv, prefix, false) => {
                let r = kv
                    .put(format!("{prefix}{name}"), vec![b'x'; size], None)
                    .await?;
                Ok(r.header().map(|h| h.revision() as u64).unwrap_or(0))
            }
            Self::Etcd(kv, prefix, true) => {
                // What a Skiff create asks of etcd: put only if absent.
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let key = format!("{prefix}{name}");
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, vec![b'x'; size], None)]);
                let r = kv.txn(txn).await?;
                anyhow::ensure!(r.succeeded(), "{name} exists already");
                Ok(r.header().map(|h| h.revision() as u64).unwrap_or(0))
            }
        }
    }

    async fn update(
        &mut self,
        name: &str,
        size: usize,
        last: &mut Option<Pod>,
    ) -> anyhow::Result<()> {
        match self {
            Self::Skiff(t) => {
                let mut p = last.take().context("update before create")?;
                p.meta_mut().labels.insert("round".into(), "2".into());
                *last = Some(Pod::update_in(t.clone(), p).await?);
                Ok(())
            }
            Self::Etcd(kv, prefix, _) => {
                kv.put(format!("{prefix}{name}"), vec![b'y'; size], None)
                    .await?;
                Ok(())
            }
        }
    }

    /// Deletes object `name`; returns the revision of the deletion.
    pub async fn delete(&mut self, name: &str) -> anyhow::Result<u64> {
        match self {
            Self::Skiff(t) => Ok(Pod::delete_in(
                t.clone(),
                DeleteParams {
                    namespace: NAMESPACE.into(),
                    name: name.into(),
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await?
            .resource_version()),
            Self::Etcd(kv, prefix, _) => {
                let r = kv.delete(format!("{prefix}{name}"), None).await?;
                Ok(r.header().map(|h| h.revision() as u64).unwrap_or(0))
            }
        }
    }
}

/// Per-operation figures of one writer.
#[derive(Default)]
struct Tally {
    latencies: Vec<(String, Latency)>,
    errors: u64,
}

impl Tally {
    fn record(&mut self, op: &str, d: Duration) {
        match self.latencies.iter_mut().find(|(o, _)| o == op) {
            Some((_, l)) => l.record(d),
            None => {
                let mut l = Latency::new();
                l.record(d);
                self.latencies.push((op.to_owned(), l));
            }
        }
    }
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    for op in &args.ops {
        anyhow::ensure!(
            ["create", "update", "delete"].contains(&op.as_str()),
            "--ops takes create, update and delete, not {op:?}"
        );
    }
    anyhow::ensure!(
        args.ops.first().is_some_and(|o| o == "create"),
        "--ops starts with create"
    );
    let etcd = args.target.starts_with("etcd://") || args.target.starts_with("etcd-txn://");
    let server = if etcd {
        None
    } else {
        Some(ServerUnderTest::start(&args.server).await?)
    };
    let addr = server.as_ref().map(|s| s.addr.clone()).unwrap_or_default();
    if !etcd {
        crate::ensure_namespace(&skiff::client::Client::connect_to(&addr).await?, NAMESPACE)
            .await?;
    }
    let per_writer_rate: Option<f64> = match args.rate.as_str() {
        "max" => None,
        r => Some(
            r.parse::<f64>().context("--rate is a number or max")? / args.writers.max(1) as f64,
        ),
    };
    // A few connections shared by the writers, as a real client pool.
    let mut targets = Vec::new();
    for _ in 0..args.writers.clamp(1, 8) {
        targets.push(Target::connect(&args.target, &addr).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(server.as_ref().and_then(|s| s.pid()));
    let started = Instant::now();
    let mut writers = Vec::new();
    let writers_n = args.writers;
    for w in 0..args.writers {
        let mut target = targets[w % targets.len()].clone();
        let (stop, done, ops, size) = (
            stop.clone(),
            done.clone(),
            args.ops.clone(),
            args.object_size,
        );
        writers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut ticker = per_writer_rate.map(|r| crate::paced(r, w, writers_n));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                i += 1;
                let mut last: Option<Pod> = None;
                for op in &ops {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    let t0 = Instant::now();
                    let result = match op.as_str() {
                        "create" => match &target {
                            Target::Skiff(t) => Pod::create_in(t.clone(), pod(&name, size))
                                .await
                                .map(|p| last = Some(p))
                                .map_err(anyhow::Error::from),
                            Target::Etcd(..) => target.create(&name, size).await.map(|_| ()),
                        },
                        "update" => target.update(&name, size, &mut last).await,
                        _ => target.delete(&name).await.map(|_| ()),
                    };
                    match result {
                        Ok(()) => {
                            tally.record(op, t0.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            tally.errors += 1;
                            break;
                        }
                    }
                }
            }
            tally
        }));
    }
    let bar = crate::progress(args.duration.as_secs().max(1), "writing");
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let secs = started.elapsed().as_secs_f64();
        bar.set_position(secs as u64);
        bar.set_message(format!(
            "{:.0} ops/s",
            done.load(Ordering::Relaxed) as f64 / secs
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for w in writers {
        let t = w.await?;
        all.errors += t.errors;
        for (op, l) in t.latencies {
            match all.latencies.iter_mut().find(|(o, _)| *o == op) {
                Some((_, total)) => total.merge(&l),
                None => all.latencies.push((op, l)),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (rss, peak, cpu) = sampler.finish();

    let mut r = Report::default();
    r.set("scenario", "write");
    r.set(
        "target",
        if targets[0].is_etcd() {
            args.target.clone()
        } else {
            format!("skiff {addr}")
        },
    );
    if !etcd {
        r.set("storage", args.server.storage.clone());
    }
    r.set("writers", args.writers);
    r.set("object_size", args.object_size);
    r.set("duration_s", secs);
    let total: u64 = all.latencies.iter().map(|(_, l)| l.count()).sum();
    r.set("ops", total);
    r.set("ops_per_sec", total as f64 / secs);
    r.set("errors", all.errors);
    for (op, l) in &all.latencies {
        r.set(&format!("{op}s_per_sec"), l.count() as f64 / secs);
        r.set(&format!("{op}_latency"), l.json());
    }
    r.set_process("server", (rss, peak, cpu));
    r.print(args.json);
    Ok(())
}
