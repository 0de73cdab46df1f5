//! The `density` scenario, Kubernetes' density test on simulated nodes:
//! N simulated kubelets (in this process; nothing runs, pods just go
//! Running) and a `skiff scheduler` process against the API server; P pods
//! are created as fast as the creators go; a watch observes each pod
//! scheduled and Running. Reports pod start-up latency (create → Running
//! observed), scheduling latency, the API's create latency, and the server's
//! memory and CPU.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use futures::StreamExt;
use skiff::Resource;
use skiff::api::meta::v1::EventType;
use skiff::client::Client;
use skiff::params::{ListParams, WatchParams};
use tokio::sync::Mutex;

use crate::report::{Latency, Report};
use crate::scheduler::small_pod;
use crate::server::{Component, Sampler, ServerArgs, ServerUnderTest};

/// Flags of `skiff-loadtest density`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Simulated nodes (kubelets in this process).
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Pods to create.
    #[arg(long, default_value_t = 3000)]
    pub pods: usize,
    /// Concurrent pod creations.
    #[arg(long, default_value_t = 64)]
    pub creators: usize,
    /// Connections the simulated kubelets share.
    #[arg(long, default_value_t = 8)]
    pub kubelet_connections: usize,
    /// Most pods per node.
    #[arg(long, default_value_t = 110)]
    pub max_pods_per_node: u32,
    /// Give up waiting for pods to run after this long.
    #[arg(long, default_value = "10m", value_parser = crate::watch::parse_duration)]
    pub timeout: Duration,
    /// Do not start a scheduler (one already runs against --server).
    #[arg(long)]
    pub no_scheduler: bool,
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

const NAMESPACE: &str = "loadtest-density";

#[derive(Default, Clone, Copy)]
struct Times {
    created: Option<Instant>,
    scheduled: Option<Instant>,
    running: Option<Instant>,
}

/// The server's latency histogram of `verb` on pods.
async fn server_latency(
    server: &ServerUnderTest,
    verb: &str,
) -> anyhow::Result<Option<crate::server::Buckets>> {
    server
        .histogram(
            "apiserver_request_duration_seconds",
            &[("verb", verb), ("resource", "pods")],
        )
        .await
}

/// The server's histogram of storage compactions.
async fn compactions(server: &ServerUnderTest) -> anyhow::Result<Option<crate::server::Buckets>> {
    server
        .histogram("etcd_request_duration_seconds", &[("operation", "compact")])
        .await
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = ServerUnderTest::start(&args.server).await?;
    let client = Client::connect_to(&server.addr).await?;
    crate::ensure_namespace(&client, NAMESPACE).await?;
    let data = tempfile::tempdir()?;

    // Simulated kubelets.
    let mut clients = Vec::new();
    for _ in 0..args.kubelet_connections.max(1) {
        clients.push(Client::connect_to(&server.addr).await?);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut kubelets = Vec::new();
    for i in 0..args.nodes {
        let name = format!("density-{i:05}");
        let mut config = skiff_kubelet::KubeletConfig::new(
            &name,
            skiff_kubelet::RuntimeKind::Sim,
            data.path().join(&name),
        );
        config.pod_cidr = Some(format!("10.{}.{}.0/24", i / 256, i % 256));
        config.max_pods = args.max_pods_per_node;
        config.cpu = Some("32".into());
        config.memory = Some("128Gi".into());
        config.listen = "127.0.0.1:0".parse().expect("address");
        let mut stopped = stopped.clone();
        let c = clients[i % clients.len()].clone();
        kubelets.push(tokio::spawn(async move {
            if let Err(e) = skiff_kubelet::run(c, config, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            {
                eprintln!("simulated kubelet {name}: {e}");
            }
        }));
    }
    let bar = crate::progress(args.nodes as u64, "nodes Ready");
    let nodes_started = Instant::now();
    loop {
        let list = client.nodes().list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|n| n.name().starts_with("density-"))
            .filter(|n| {
                n.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "Ready" && c.status == "True")
                })
            })
            .count();
        bar.set_position(ready as u64);
        if ready >= args.nodes {
            break;
        }
        anyhow::ensure!(
            nodes_started.elapsed() < Duration::from_secs(300),
            "only {ready} of {} simulated nodes Ready after 5 minutes",
            args.nodes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    let nodes_ready_secs = nodes_started.elapsed().as_secs_f64();
    let _scheduler = if args.no_scheduler {
        None
    } else {
        let mut flags = vec!["scheduler", "--leader-elect=false"];
        flags.extend(args.scheduler_args.iter().map(String::as_str));
        Some(Component::start(&server.addr, &flags)?)
    };

    // Observe every pod of the namespace.
    let times: Arc<Mutex<HashMap<String, Times>>> = Arc::default();
    let start_rv = client
        .pods(NAMESPACE)
        .list(&ListParams {
            resource_version: "0".into(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .metadata
        .resource_version;
    let mut events = client
        .pods(NAMESPACE)
        .watch(&WatchParams {
            resource_version: start_rv,
            ..Default::default()
        })
        .await
        .context("watching pods")?;
    let (running_tx, mut running_rx) = tokio::sync::watch::channel(0usize);
    let observer = {
        let times = times.clone();
        tokio::spawn(async move {
            let mut running = 0;
            while let Some(ev) = events.next().await {
                let Ok(ev) = ev else { continue };
                let live =
                    ev.r#type == EventType::Added as i32 || ev.r#type == EventType::Modified as i32;
                let Some(p) = ev.object.filter(|_| live) else {
                    continue;
                };
                let now = Instant::now();
                let mut t = times.lock().await;
                let e = t.entry(p.name().to_owned()).or_default();
                let spec_node = p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
                if spec_node && e.scheduled.is_none() {
                    e.scheduled = Some(now);
                }
                if p.status.as_ref().is_some_and(|s| s.phase == "Running") && e.running.is_none() {
                    e.running = Some(now);
                    running += 1;
                    let _ = running_tx.send(running);
                }
            }
        })
    };

    // Create.
    let verbs = ["create", "update", "bind"];
    let mut server_before = Vec::new();
    for verb in verbs {
        server_before.push(server_latency(&server, verb).await?);
    }
    let compactions_before = compactions(&server).await?;
    let sampler = Sampler::start(server.pid());
    let started = Instant::now();
    let bar = crate::progress(args.pods as u64, "pods Running");
    let api = client.pods(NAMESPACE);
    let creates: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..args.pods)
        .map(|i| {
            let (api, times) = (api.clone(), times.clone());
            async move {
                let t0 = Instant::now();
                let name = format!("d{i:06}");
                api.create(&small_pod(NAMESPACE, &name)).await?;
                let d = t0.elapsed();
                times.lock().await.entry(name).or_default().created = Some(t0);
                Ok(d)
            }
        })
        .buffer_unordered(args.creators.max(1))
        .inspect(|_| bar.set_position(*running_rx.borrow() as u64))
        .collect()
        .await;
    let created_secs = started.elapsed().as_secs_f64();
    let mut create_latency = Latency::new();
    let mut create_errors = 0;
    for c in &creates {
        match c {
            Ok(d) => create_latency.record(*d),
            Err(_) => create_errors += 1,
        }
    }
    let want = args.pods - create_errors;
    let deadline = started + args.timeout;
    loop {
        let running = *running_rx.borrow_and_update();
        bar.set_position(running as u64);
        if running >= want || Instant::now() > deadline {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), running_rx.changed()).await;
    }
    let all_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (rss, peak, cpu) = sampler.finish();
    observer.abort();
    let _ = stop.send(true);

    let mut startup = Latency::new();
    let mut scheduling = Latency::new();
    let mut running = 0;
    for t in times.lock().await.values() {
        let Some(created) = t.created else { continue };
        if let Some(s) = t.scheduled {
            scheduling.record(s.saturating_duration_since(created));
        }
        if let Some(r) = t.running {
            startup.record(r.saturating_duration_since(created));
            running += 1;
        }
    }
    let mut r = Report::default();
    r.set("scenario", "density");
    r.set("target", format!("skiff {}", server.addr));
    r.set("storage", args.server.storage.clone());
    r.set("nodes", args.nodes);
    r.set("nodes_ready_s", nodes_ready_secs);
    r.set("pods", args.pods);
    r.set("pods_running", running);
    r.set("create_errors", create_errors);
    r.set("creates_per_sec", want as f64 / created_secs);
    r.set("pods_running_per_sec", running as f64 / all_secs);
    r.set("duration_s", all_secs);
    r.set("pod_startup_latency", startup.json());
    r.set("scheduling_latency", scheduling.json());
    r.set("create_latency", create_latency.json());
    r.set_process("server", (rss, peak, cpu));
    // As Kubernetes' SLIs are computed: from the server's own histogram
    // (request in to response out), per verb of pods; what the load
    // generator sees adds its own queueing on the shared cores.
    for (verb, before) in verbs.iter().zip(server_before) {
        if let (Some(before), Some(after)) = (before, server_latency(&server, verb).await?) {
            let d = after.since(&before);
            let ms = |q| d.quantile(q).map(|s| s * 1000.0);
            r.set(
                &format!("server_{verb}_pod_latency"),
                serde_json::json!({"count": d.count(), "p50_ms": ms(0.5), "p99_ms": ms(0.99)}),
            );
        }
    }
    // A storage compaction runs in the write path: how long the longest took.
    if let (Some(before), Some(after)) = (compactions_before, compactions(&server).await?) {
        let d = after.since(&before);
        r.set(
            "server_storage_compactions",
            serde_json::json!({"count": d.count(), "longest_at_most_ms": d.upper_bound().map(|s| s * 1000.0)}),
        );
    }
    r.print(args.json);
    for k in kubelets {
        let _ = tokio::time::timeout(Duration::from_secs(5), k).await;
    }
    anyhow::ensure!(
        running == want,
        "only {running} of {want} pods Running before the timeout"
    );
    Ok(())
}
