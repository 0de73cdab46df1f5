//! The server under test: one given with `--server`, or a `skiff apiserver`
//! this tool starts (and stops) itself, whose memory and CPU it samples.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args as ClapArgs;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Flags choosing the server.
#[derive(Debug, Clone, ClapArgs)]
pub struct ServerArgs {
    /// Address of a running API server; without it, one is started.
    #[arg(long)]
    pub server: Option<String>,
    /// Storage of the started server: embedded, or etcd at --etcd-endpoints.
    #[arg(long, default_value = "embedded")]
    pub storage: String,
    /// etcd endpoints for `--storage etcd` (comma-separated for a cluster).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: String,
    /// Pin the started server to these CPUs (`taskset -c LIST`), e.g. 0,
    /// with the load generator itself under `taskset -c 1`: server is then
    /// compared with server, not with the load generator.
    #[arg(long)]
    pub server_cpus: Option<String>,
}

/// A server to load.
pub struct ServerUnderTest {
    /// Its address.
    pub addr: String,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
    /// Lines of a started server's log that report a panic.
    pub panics: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Address of a started server's Prometheus endpoint.
    pub metrics: Option<String>,
}

/// The `skiff` binary: `$SKIFF_BIN`, else beside this one.
pub fn skiff_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKIFF_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("skiff")))
        .unwrap_or_else(|| PathBuf::from("skiff"))
}

impl ServerUnderTest {
    /// Connects to `--server` or starts a server (insecure: no
    /// authentication, no authorization).
    pub async fn start(args: &ServerArgs) -> anyhow::Result<Self> {
        Self::start_with(args, None).await
    }

    /// Connects to `--server` or starts a server; with `tokens` (a static
    /// token file), one that authenticates by those tokens and authorizes
    /// by RBAC, over plaintext.
    pub async fn start_with(
        args: &ServerArgs,
        tokens: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        if let Some(addr) = &args.server {
            return Ok(Self {
                addr: addr.clone(),
                child: None,
                _data: None,
                panics: Default::default(),
                metrics: None,
            });
        }
        let data = tempfile::tempdir()?;
        let bin = skiff_bin();
        // taskset execs the server in place: the pid sampled stays the server's.
        let mut cmd = match &args.server_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("apiserver");
        match tokens {
            Some(file) => {
                cmd.args([
                    "--plaintext",
                    "--authorization-mode",
                    "RBAC",
                    "--token-auth-file",
                ])
                .arg(file);
            }
            None => {
                cmd.arg("--insecure");
            }
        }
        cmd.args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--compaction-interval",
            "1m",
            // The load generator is one client: no in-flight or watch caps.
            "--max-requests-inflight",
            "0",
            "--max-mutating-requests-inflight",
            "0",
            "--max-watches-per-user",
            "0",
        ]);
        match args.storage.as_str() {
            "embedded" => {
                cmd.arg("--data-dir").arg(data.path());
            }
            "etcd" => {
                let prefix = format!("/loadtest-{}", std::process::id());
                cmd.args([
                    "--storage",
                    "etcd",
                    "--etcd-endpoints",
                    &args.etcd_endpoints,
                    "--etcd-prefix",
                    &prefix,
                ]);
            }
            other => bail!("unknown --storage {other:?}: use embedded or etcd"),
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it with `cargo build --release -p skiff-cli`, or set SKIFF_BIN)", bin.display()))?;
        // The log is read to its end (a full pipe would stall the server):
        // what reports a panic is kept, and the last lines, to say why a
        // server did not start.
        let panics: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let last: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let stderr = child.stderr.take().context("server stderr")?;
        let (kept, tail) = (panics.clone(), last.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let lock = |m: &std::sync::Mutex<Vec<String>>| {
                    m.lock()
                        .map(|mut v| {
                            if v.len() >= 20 {
                                v.remove(0);
                            }
                            v.push(line.clone());
                        })
                        .ok();
                };
                if line.contains("panicked") {
                    lock(&kept);
                }
                lock(&tail);
            }
        });
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        let listening = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("metrics on ") {
                    metrics = Some(a.trim().to_owned());
                }
                if let Some(a) = line.strip_prefix("listening on ") {
                    return Ok::<_, anyhow::Error>(a.trim().to_owned());
                }
            }
            bail!("the server exited before listening")
        })
        .await
        .context("the server did not start within 60 s")
        .and_then(|r| r);
        let addr = match listening {
            Ok(a) => a,
            Err(e) => {
                // Let the log reader catch up with the server's last words.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let said = last.lock().map(|v| v.join("\n")).unwrap_or_default();
                return Err(e.context(format!("{} said:\n{said}", bin.display())));
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            addr,
            child: Some(child),
            _data: Some(data),
            panics,
            metrics,
        })
    }

    /// The started server's own latency histogram `name` for the series
    /// with `labels` (e.g. `apiserver_request_duration_seconds`, verb
    /// create, resource Pod): what Kubernetes' API-call latency SLIs are
    /// computed from. `None` for a server given with `--server`.
    pub async fn histogram(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Option<Buckets>> {
        let Some(addr) = &self.metrics else {
            return Ok(None);
        };
        let text = scrape(addr).await?;
        Ok(Some(Buckets::parse(&text, name, labels)))
    }

    /// How a started server ended, if it has (`None` while it runs, and for
    /// a server given with `--server`).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Process id of a server this tool started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

/// A component process (`skiff scheduler`, …) started against the server, stopped on drop.
pub struct Component {
    child: Child,
}

impl Component {
    /// Starts `skiff <args> --server <addr>`.
    pub fn start(addr: &str, args: &[&str]) -> anyhow::Result<Self> {
        let bin = skiff_bin();
        let child = Command::new(&bin)
            .args(args)
            .args(["--server", addr])
            .env("SKIFF_CONFIG", "/nonexistent/loadtest-config")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?;
        Ok(Self { child })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Samples a process's memory and CPU while a scenario runs.
pub struct Sampler {
    pid: Option<u32>,
    cpu_start: f64,
    started: std::time::Instant,
    peak_rss: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `pid` (nothing if `None`).
    pub fn start(pid: Option<u32>) -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = pid.map(|pid| {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(r) = rss_bytes(pid) {
                        peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        });
        Self {
            pid,
            cpu_start: pid.and_then(cpu_seconds).unwrap_or(0.0),
            started: std::time::Instant::now(),
            peak_rss: peak,
            task,
        }
    }

    /// (current RSS, peak RSS, average CPU cores used) of the server.
    pub fn finish(mut self) -> (Option<u64>, Option<u64>, Option<f64>) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let Some(pid) = self.pid else {
            return (None, None, None);
        };
        let rss = rss_bytes(pid);
        let peak = self
            .peak_rss
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(rss.unwrap_or(0));
        let cpu =
            cpu_seconds(pid).map(|c| (c - self.cpu_start) / self.started.elapsed().as_secs_f64());
        (rss, Some(peak), cpu)
    }
}

/// Reads `http://addr/metrics` (Prometheus text).
async fn scrape(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the server's metrics on {addr}"))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: loadtest\r\n\r\n")
        .await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(body))
}

/// A latency histogram's cumulative buckets as a server exposes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The buckets of `name` whose series carries every one of `labels`.
    pub fn parse(text: &str, name: &str, labels: &[(&str, &str)]) -> Self {
        let prefix = format!("{name}_bucket{{");
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((series, count)) = rest.rsplit_once("} ") else {
                continue;
            };
            if !labels
                .iter()
                .all(|(k, v)| series.split(',').any(|l| l == format!("{k}=\"{v}\"")))
            {
                continue;
            }
            let Some(le) = series
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))
                .map(|l| l.trim_end_matches('"'))
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            if let Ok(c) = count.trim().parse::<u64>() {
                out.push((le, c));
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(out)
    }

    /// What was observed between `earlier` and this reading.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Self(
            self.0
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0, |(_, c)| *c);
                    (*le, c.saturating_sub(before))
                })
                .collect(),
        )
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |(_, c)| *c)
    }

    /// The smallest bucket bound every observation is within, in seconds
    /// (`None` if empty or past the last finite bound).
    pub fn upper_bound(&self) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        self.0
            .iter()
            .find(|(_, c)| *c == total)
            .map(|(le, _)| *le)
            .filter(|le| le.is_finite())
    }

    /// The `q` quantile in seconds, interpolated linearly within its
    /// bucket as Prometheus' `histogram_quantile` does; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(le, c) in &self.0 {
            if c as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = (c - below) as f64;
                let frac = if inside > 0.0 {
                    (rank - below as f64) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * frac);
            }
            (lower, below) = (le, c);
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::Buckets;

    const TEXT: &str = r#"# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{verb="create",resource="Pod",le="0.01"} 50
apiserver_request_duration_seconds_bucket{verb="create",resource="Pod",le="0.1"} 90
apiserver_request_duration_seconds_bucket{verb="create",resource="Pod",le="+Inf"} 100
apiserver_request_duration_seconds_bucket{verb="get",resource="Pod",le="0.01"} 7
"#;

    #[test]
    fn a_quantile_is_interpolated_within_its_bucket_of_the_chosen_series() {
        let b = Buckets::parse(
            TEXT,
            "apiserver_request_duration_seconds",
            &[("verb", "create"), ("resource", "Pod")],
        );
        assert_eq!(b.count(), 100);
        assert!((b.quantile(0.5).unwrap() - 0.01).abs() < 1e-9);
        // Rank 70 of 100 is half-way through the 0.01..0.1 bucket.
        assert!((b.quantile(0.7).unwrap() - 0.055).abs() < 1e-9);
        // Past the last finite bound: that bound.
        assert!((b.quantile(0.99).unwrap() - 0.1).abs() < 1e-9);
        let none = Buckets::parse(
            TEXT,
            "apiserver_request_duration_seconds",
            &[("verb", "list")],
        );
        assert_eq!(none.quantile(0.99), None);
    }

    #[test]
    fn the_difference_of_two_readings_counts_only_what_came_between() {
        let labels = [("verb", "create"), ("resource", "Pod")];
        let after = Buckets::parse(TEXT, "apiserver_request_duration_seconds", &labels);
        let before = Buckets::parse(
            &TEXT
                .replace("} 50", "} 20")
                .replace("} 90", "} 40")
                .replace("} 100", "} 40"),
            "apiserver_request_duration_seconds",
            &labels,
        );
        let d = after.since(&before);
        assert_eq!(d.count(), 60);
        assert_eq!(
            Buckets::parse(
                &TEXT.replace("} 100", "} 90"),
                "apiserver_request_duration_seconds",
                &labels
            )
            .upper_bound(),
            Some(0.1)
        );
        assert!((d.quantile(0.5).unwrap() - 0.01).abs() < 1e-9);
    }
}
