//! The `list` scenario: N pods in one namespace, then large lists of them
//! from the watch cache — whole (`resource_version` "0" and a consistent
//! read) and a page at a time — timed from request to the last byte.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use futures::StreamExt;
use skiff::api::core::v1::Pod;
use skiff::client::{Credentials, ResourceClient, connect};

use crate::lite::{LiteListRequest, list_pods};
use crate::report::{Latency, Report};
use crate::server::{Sampler, ServerArgs, ServerUnderTest, rss_bytes};
use crate::watch::{NAMESPACE, pod};

/// Flags of `skiff-loadtest list`.
#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Pods to create first (existing ones are reused).
    #[arg(long, default_value_t = 10_000)]
    pub objects: usize,
    /// Size of each pod in bytes.
    #[arg(long, default_value_t = 256)]
    pub object_size: usize,
    /// Lists per mode.
    #[arg(long, default_value_t = 20)]
    pub lists: usize,
    /// Lists in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Page size of the paginated mode.
    #[arg(long, default_value_t = 500)]
    pub page_size: i32,
    /// Concurrent creations while filling.
    #[arg(long, default_value_t = 64)]
    pub creators: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = ServerUnderTest::start(&args.server).await?;
    crate::ensure_namespace(
        &skiff::client::Client::connect_to(&server.addr).await?,
        NAMESPACE,
    )
    .await?;
    let t = connect(&server.addr, Credentials::none()).await?;
    let rss_empty = server.pid().and_then(rss_bytes);
    let bar = crate::progress(args.objects as u64, "creating pods");
    let fill_started = Instant::now();
    let failures = futures::stream::iter(0..args.objects)
        .map(|i| {
            let t = t.clone();
            let p = pod(&format!("l{i}"), args.object_size);
            async move {
                match Pod::create_in(t, p).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(args.creators.max(1))
        .inspect(|_| bar.inc(1))
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    bar.finish_and_clear();
    anyhow::ensure!(failures == 0, "{failures} creations failed");
    let fill_secs = fill_started.elapsed().as_secs_f64();
    // What the cache holds for the objects, before any list allocates.
    let rss_filled = server.pid().and_then(rss_bytes);

    let sampler = Sampler::start(server.pid());
    let mut r = Report::default();
    r.set("scenario", "list");
    r.set("target", format!("skiff {}", server.addr));
    r.set("storage", args.server.storage.clone());
    r.set("objects", args.objects);
    r.set("object_size", args.object_size);
    r.set("fill_creates_per_sec", args.objects as f64 / fill_secs);
    if let (Some(empty), Some(filled)) = (rss_empty, rss_filled) {
        r.set("server_rss_empty_bytes", empty);
        r.set("server_rss_filled_bytes", filled);
        r.set(
            "server_rss_per_object_bytes",
            filled.saturating_sub(empty) as f64 / args.objects.max(1) as f64,
        );
    }
    let modes: [(&str, &str, i32); 3] = [
        ("list_rv0", "0", 0),
        ("list_consistent", "", 0),
        ("list_paginated", "", args.page_size),
    ];
    for (mode, rv, page) in modes {
        let bar = crate::progress(args.lists as u64, mode);
        let started = Instant::now();
        let results: Vec<anyhow::Result<(Duration, usize, usize)>> =
            futures::stream::iter(0..args.lists)
                .map(|_| {
                    let t = t.clone();
                    async move { list_all(t, rv, page).await }
                })
                .buffer_unordered(args.concurrency.max(1))
                .inspect(|_| bar.inc(1))
                .collect()
                .await;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        let mut latency = Latency::new();
        let mut items = 0;
        let mut bytes = 0;
        for res in results {
            let (d, n, b) = res.with_context(|| mode.to_string())?;
            anyhow::ensure!(
                n >= args.objects,
                "{mode} returned {n} of {} pods",
                args.objects
            );
            latency.record(d);
            items += n;
            bytes += b;
        }
        r.set(&format!("{mode}_latency"), latency.json());
        r.set(&format!("{mode}_items_per_sec"), items as f64 / secs);
        r.set(
            &format!("{mode}_mib_per_sec"),
            bytes as f64 / secs / (1 << 20) as f64,
        );
    }
    let (rss, peak, cpu) = sampler.finish();
    r.set_process("server", (rss, peak, cpu));
    r.print(args.json);
    Ok(())
}

/// Lists every pod of the namespace (following pages); returns the time,
/// the items and the bytes received.
async fn list_all(
    t: skiff::client::Transport,
    rv: &str,
    page_size: i32,
) -> anyhow::Result<(Duration, usize, usize)> {
    let started = Instant::now();
    let (mut items, mut bytes) = (0, 0);
    let mut token = String::new();
    loop {
        let page = list_pods(
            t.clone(),
            LiteListRequest {
                namespace: NAMESPACE.into(),
                resource_version: if token.is_empty() {
                    rv.into()
                } else {
                    String::new()
                },
                page_size,
                page_token: token.clone(),
            },
        )
        .await?;
        items += page.items.len();
        bytes += page.items.iter().map(|b| b.len()).sum::<usize>();
        token = page.metadata.map(|m| m.next_page_token).unwrap_or_default();
        if token.is_empty() {
            return Ok((started.elapsed(), items, bytes));
        }
    }
}
