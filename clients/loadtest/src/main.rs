//! `skiff-loadtest`: streaming load tests against a Skiff API server.

mod density;
mod dns;
mod fuzz;
mod list;
mod lite;
mod proxy;
mod report;
mod scan;
mod scheduler;
mod server;
mod watch;
mod write;

use clap::{Parser, Subcommand};

/// Streaming load tests for Skiff. Each scenario prints a progress bar while
/// it runs and a summary at the end (`--json` for machines).
#[derive(Parser)]
#[command(name = "skiff-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Watch fan-out: many watchers, many writers, delivery rate and latency.
    Watch(watch::Args),
    /// Write throughput and latency: create, update, delete (against Skiff or etcd).
    Write(write::Args),
    /// Large lists from the watch cache, whole and paginated.
    List(list::Args),
    /// Density on simulated nodes: create → scheduled → Running observed by watch.
    Density(density::Args),
    /// Scheduler throughput: simulated nodes, pods created as fast as possible.
    Scheduler(scheduler::Args),
    /// The service proxy against direct connections: throughput, latency, connection rate.
    Proxy(proxy::Args),
    /// The cluster DNS server alone: queries per second and latency.
    Dns(dns::Args),
    /// Every method of every service with requests made wrong on purpose,
    /// against a server with RBAC: codes per method, and a failure on any
    /// server error a client caused, panic, lost answer or refused write
    /// that changed storage.
    Fuzz(fuzz::Args),
}

/// mimalloc instead of glibc's allocator: under load, glibc's malloc and
/// free took about a third of the load generator's CPU (`perf` during
/// `skiff-loadtest density`), most of it in freeing across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = skiff::rt::multi_thread()?;
    runtime.block_on(async move {
        match cli.scenario {
            Scenario::Watch(args) => watch::run(args).await,
            Scenario::Write(args) => write::run(args).await,
            Scenario::List(args) => list::run(args).await,
            Scenario::Density(args) => density::run(args).await,
            Scenario::Scheduler(args) => scheduler::run(args).await,
            Scenario::Proxy(args) => proxy::run(args).await,
            Scenario::Dns(args) => dns::run(args).await,
            Scenario::Fuzz(args) => fuzz::run(args).await,
        }
    })
}

/// The ticker of writer `w` of `n` that each write `rate` times a second:
/// the writers' ticks are spread evenly over the period, so that a total
/// rate arrives as a steady stream, not as waves of `n` at once.
pub(crate) fn paced(rate: f64, w: usize, n: usize) -> tokio::time::Interval {
    let period = std::time::Duration::from_secs_f64(1.0 / rate.max(0.001));
    let offset = period.mul_f64(w as f64 / n.max(1) as f64);
    tokio::time::interval_at(tokio::time::Instant::now() + offset, period)
}

/// Seconds as a flag gives them ("5s", "2.5").
pub(crate) fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let n: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?}: expected seconds like 5s"))?;
    Ok(std::time::Duration::from_secs_f64(n))
}

/// A progress bar on standard error.
pub(crate) fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// Creates a namespace unless it exists.
pub(crate) async fn ensure_namespace(
    client: &skiff::client::Client,
    name: &str,
) -> anyhow::Result<()> {
    let ns = skiff::api::core::v1::Namespace {
        metadata: Some(skiff::api::meta::v1::ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match client.namespaces().create(&ns).await {
        Ok(_) | Err(skiff::client::Error::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating namespace {name}"))),
    }
}
