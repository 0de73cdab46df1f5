//! `skiff`: the command line of a Skiff cluster.

mod apiserver;
mod apply;
mod bootstrap;
mod components;
mod ctx;
mod describe;
mod get;
mod jsonpath;
mod kubelet;
mod misc;
mod pods;
mod printers;
mod rollout;
mod up;

use clap::{Parser, Subcommand};

/// Skiff: a Kubernetes-style control plane over gRPC.
#[derive(Parser)]
#[command(name = "skiff", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// API server address, or several of one cluster comma-separated
    /// ("a:6443,b:6443": calls go to every one that answers). Default: from
    /// ~/.skiff/config or SKIFF_CONFIG, else 127.0.0.1:6443.
    #[arg(long, global = true, env = "SKIFF_SERVER")]
    server: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9090;
    /// port 0 picks one, printed as "metrics on ADDR").
    #[arg(long, global = true)]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server.
    Apiserver(apiserver::Args),
    /// Run the scheduler.
    Scheduler(components::SchedulerArgs),
    /// Run the controller manager.
    ControllerManager(components::ControllerManagerArgs),
    /// Run the service proxy.
    Proxy(components::ProxyArgs),
    /// Run the cluster DNS server (SVC.NS.svc.cluster.local).
    Dns(components::DnsArgs),
    /// Run a whole cluster in this process: API server, scheduler,
    /// controller manager, node(s), proxy and cluster DNS.
    Up(Box<up::Args>),
    /// Run a node agent: make this machine (or a slice of it) a node.
    Kubelet(Box<kubelet::Args>),
    /// Display one or many objects.
    Get(get::Args),
    /// Show one object in detail, with its events.
    Describe(describe::Args),
    /// Create or update objects from manifests.
    Apply(apply::ApplyArgs),
    /// Create objects from manifests.
    Create(apply::CreateArgs),
    /// Delete objects by name or from manifests.
    Delete(apply::DeleteArgs),
    /// Print the log of a container in a pod.
    Logs(pods::LogsArgs),
    /// Run a command in a container of a pod.
    Exec(pods::ExecArgs),
    /// Set the number of pods of a deployment or replica set.
    Scale(misc::ScaleArgs),
    /// Manage rollouts.
    #[command(subcommand)]
    Rollout(rollout::Rollout),
    /// Print the client version and whether the server answers.
    Version,
    /// List the kinds the API serves.
    ApiResources,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Exits quietly when stdout is closed early (`skiff get pods | head`), as
/// Unix tools do, instead of panicking in `println!`.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// mimalloc instead of glibc's allocator: under load, glibc's malloc and
/// free took about a third of every component's CPU (`perf` during
/// `skiff-loadtest density`), most of it in freeing across threads. Built
/// without transparent huge pages (`no_thp`): with them a growing heap
/// faulted in and zeroed 2 MiB at a time — RSS per idle watch 1.6× and
/// write→event stalls of tens of milliseconds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match skiff::rt::multi_thread() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let server = cli.server.clone();
    let metrics = cli.metrics_listen;
    let result = runtime.block_on(async move {
        let mut metrics_bound = None;
        if let Some(addr) = metrics {
            match skiff::metrics::spawn_endpoint(addr).await {
                // Machines (tests, scripts) read this line to learn the address.
                Ok(bound) => {
                    println!("metrics on {bound}");
                    metrics_bound = Some(bound);
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "cannot serve metrics on {addr}: {e}; pick another --metrics-listen"
                    ));
                }
            }
        }
        let server = server.as_deref();
        if matches!(
            cli.command,
            Command::Get(_)
                | Command::Describe(_)
                | Command::Apply(_)
                | Command::Create(_)
                | Command::Delete(_)
                | Command::Scale(_)
                | Command::ApiResources
        ) {
            ctx::learn_kinds(server).await;
        }
        match cli.command {
            Command::Apiserver(args) => apiserver::run(args).await,
            Command::Scheduler(args) => components::scheduler(args, server).await,
            Command::ControllerManager(args) => components::controller_manager(args, server).await,
            Command::Proxy(args) => components::proxy(args, server).await,
            Command::Dns(args) => components::dns(args, server, metrics_bound).await,
            Command::Up(args) => up::run(*args).await,
            Command::Kubelet(args) => kubelet::run(*args, server).await,
            Command::Logs(args) => pods::logs(args, server).await,
            Command::Exec(args) => pods::exec(args, server).await,
            Command::Rollout(cmd) => rollout::run(cmd, server).await,
            Command::Get(args) => get::run(args, server).await,
            Command::Describe(args) => describe::run(args, server).await,
            Command::Apply(args) => apply::apply(args, server).await,
            Command::Create(args) => apply::create(args, server).await,
            Command::Delete(args) => apply::delete(args, server).await,
            Command::Scale(args) => misc::scale(args, server).await,
            Command::Version => misc::version(server).await,
            Command::ApiResources => {
                misc::api_resources();
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
