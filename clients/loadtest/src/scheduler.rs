//! The `scheduler` scenario: simulated nodes registered in the API server,
//! pods created as fast as possible, a `skiff scheduler` process binding
//! them; reports pods bound per second and the latency from a pod's
//! creation to its binding being observed by watch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use futures::StreamExt;
use skiff::api::core::v1::{
    Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::{Client, Credentials, ResourceClient, connect};
use skiff::params::{ListParams, WatchParams};
use tokio::sync::Mutex;

use crate::report::{Latency, Report};
use crate::server::{Component, Sampler, ServerArgs, ServerUnderTest};

/// Flags of `skiff-loadtest scheduler`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Simulated nodes to register.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Pods to create.
    #[arg(long, default_value_t = 10000)]
    pub pods: usize,
    /// Concurrent pod creations.
    #[arg(long, default_value_t = 64)]
    pub creators: usize,
    /// Do not start a scheduler (one already runs against --server).
    #[arg(long)]
    pub no_scheduler: bool,
    /// Create every pod first, then start the scheduler: pods bound per
    /// second is then the scheduler's own rate (first bind to last), not
    /// bounded by how fast pods are created.
    #[arg(long, conflicts_with = "no_scheduler")]
    pub create_first: bool,
    /// A flag for the `skiff scheduler` started (repeatable), e.g.
    /// `--scheduler-arg=--bind-batch-size=1`.
    #[arg(long = "scheduler-arg", allow_hyphen_values = true)]
    pub scheduler_args: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

const NAMESPACE: &str = "loadtest-sched";

/// A Ready simulated node with room for 110 pods.
pub fn sim_node(name: &str) -> Node {
    let resources: std::collections::BTreeMap<String, String> =
        [("cpu", "32"), ("memory", "128Gi"), ("pods", "110")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    Node {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: [("skiff.io/simulated".to_string(), "true".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            capacity: resources.clone(),
            allocatable: resources,
            conditions: vec![NodeCondition {
                r#type: "Ready".into(),
                status: "True".into(),
                reason: "KubeletReady".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// A small pod requesting 100m CPU and 64 MiB.
pub fn small_pod(namespace: &str, name: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "busybox".into(),
                resources: Some(ResourceRequirements {
                    requests: [
                        ("cpu".to_string(), "100m".to_string()),
                        ("memory".to_string(), "64Mi".to_string()),
                    ]
                    .into(),
                    limits: Default::default(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// Registers `n` simulated nodes named `{prefix}{i}`, `concurrency` at a time.
pub async fn register_nodes(
    client: &Client,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let bar = crate::progress(n as u64, "registering nodes");
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let api = client.nodes();
            async move {
                match api.create(&sim_node(&format!("{prefix}{i:05}"))).await {
                    Ok(_) | Err(skiff::client::Error::AlreadyExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(concurrency)
        .inspect(|_| bar.inc(1))
        .collect()
        .await;
    bar.finish_and_clear();
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("registering nodes")?;
    Ok(())
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = ServerUnderTest::start(&args.server).await?;
    let client = Client::connect_to(&server.addr).await?;
    crate::ensure_namespace(&client, NAMESPACE).await?;
    register_nodes(&client, "sim-node-", args.nodes, 64).await?;
    let start_scheduler = || -> anyhow::Result<Option<Component>> {
        if args.no_scheduler {
            return Ok(None);
        }
        let mut flags = vec!["scheduler", "--leader-elect=false"];
        flags.extend(args.scheduler_args.iter().map(String::as_str));
        Ok(Some(Component::start(&server.addr, &flags)?))
    };
    let mut scheduler = if args.create_first {
        None
    } else {
        start_scheduler()?
    };

    // Watch pods of the namespace for bindings.
    let start_rv = Pod::list_in(
        client.transport(),
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
    let watch_t = connect(&server.addr, Credentials::none()).await?;
    let mut events = Box::pin(
        crate::lite::watch_pods(
            watch_t,
            WatchParams {
                namespace: NAMESPACE.into(),
                resource_version: start_rv,
                ..Default::default()
            },
        )
        .await?,
    );
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bound_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bound = Arc::new(AtomicU64::new(0));
    let (c2, b2, n2) = (created.clone(), bound_at.clone(), bound.clone());
    let total = args.pods as u64;
    let watcher = tokio::spawn(async move {
        let mut latency = Latency::new();
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            if ev.node_name().is_empty() {
                continue;
            }
            let now = Instant::now();
            let name = ev.name().to_owned();
            let mut b = b2.lock().await;
            if b.contains_key(&name) {
                continue;
            }
            b.insert(name.clone(), now);
            drop(b);
            if let Some(at) = c2.lock().await.get(&name) {
                latency.record(now.saturating_duration_since(*at));
            }
            if n2.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                break;
            }
        }
        latency
    });

    let sampler = Sampler::start(server.pid());
    let mut sched_sampler = Sampler::start(scheduler.as_ref().and_then(Component::pid));
    let started = Instant::now();
    let bar = crate::progress(total, "creating pods");
    let creations = futures::stream::iter(0..args.pods)
        .map(|i| {
            let t = client.transport();
            let created = created.clone();
            async move {
                let name = format!("p-{i:06}");
                created.lock().await.insert(name.clone(), Instant::now());
                Pod::create_in(t, small_pod(NAMESPACE, &name)).await
            }
        })
        .buffer_unordered(args.creators)
        .inspect(|_| bar.inc(1));
    let results: Vec<_> = creations.collect().await;
    let create_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let scheduler_started = Instant::now();
    if args.create_first {
        scheduler = start_scheduler()?;
        sched_sampler = Sampler::start(scheduler.as_ref().and_then(Component::pid));
    }
    let bar = crate::progress(total, "waiting for binds");
    let deadline = Instant::now() + Duration::from_secs(600);
    while bound.load(Ordering::Relaxed) < total - failed as u64 && Instant::now() < deadline {
        bar.set_position(bound.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    let bound_total = bound.load(Ordering::Relaxed);
    let last_bound = bound_at
        .lock()
        .await
        .values()
        .max()
        .copied()
        .unwrap_or_else(Instant::now);
    let first_bound = bound_at
        .lock()
        .await
        .values()
        .min()
        .copied()
        .unwrap_or(last_bound);
    // From the first create, or with --create-first from the first bind.
    let from = if args.create_first {
        first_bound
    } else {
        started
    };
    let secs = last_bound.duration_since(from).as_secs_f64().max(1e-9);
    watcher.abort();
    let latency = watcher.await.unwrap_or_else(|_| Latency::new());
    let (rss, peak, cpu) = sampler.finish();
    let (srss, speak, scpu) = sched_sampler.finish();
    let mut r = Report::default();
    r.set("scenario", "scheduler");
    r.set("nodes", args.nodes);
    r.set("pods", args.pods);
    r.set("create_failures", failed);
    r.set("pods_bound", bound_total);
    r.set("create_secs", create_secs);
    r.set("creates_per_sec", args.pods as f64 / create_secs);
    r.set("duration_s", secs);
    r.set("pods_bound_per_sec", bound_total as f64 / secs);
    if args.create_first {
        r.set(
            "scheduler_start_to_last_bound_s",
            last_bound.duration_since(scheduler_started).as_secs_f64(),
        );
    } else {
        r.set("latency_create_to_bound", latency.json());
    }
    r.set_process("server", (rss, peak, cpu));
    r.set_process("scheduler", (srss, speak, scpu));
    r.print(args.json);
    drop(scheduler);
    Ok(())
}
