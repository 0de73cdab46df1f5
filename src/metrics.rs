//! Prometheus metrics: labelled counters, gauges and histograms in one
//! process-wide registry, rendered as Prometheus text on `/metrics` by a
//! small HTTP endpoint every component can serve (`--metrics-listen`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Latency buckets in seconds (Kubernetes' request-duration buckets).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

type Labels = Vec<String>;

/// Something the registry renders.
trait Family: Send + Sync {
    fn render(&self, out: &mut String);
}

/// Computes samples when scraped (e.g. cache sizes held elsewhere).
pub type Collector = Box<dyn Fn(&mut Exposition) + Send + Sync>;

/// A set of metric families.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<Arc<dyn Family>>>,
    collectors: Mutex<Vec<Collector>>,
}

/// The process-wide registry.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Registry {
    fn add<F: Family + 'static>(&self, f: Arc<F>) -> Arc<F> {
        self.families
            .lock()
            .expect("metrics lock")
            .push(f.clone() as Arc<dyn Family>);
        f
    }

    /// A new counter family with `labels`.
    pub fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> Arc<CounterVec> {
        self.add(Arc::new(CounterVec(Vec_::new(name, help, labels))))
    }

    /// A new gauge family with `labels`.
    pub fn gauge(&self, name: &str, help: &str, labels: &'static [&'static str]) -> Arc<GaugeVec> {
        self.add(Arc::new(GaugeVec(Vec_::new(name, help, labels))))
    }

    /// A new histogram family with `labels` and `buckets` (upper bounds).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Arc<HistogramVec> {
        self.add(Arc::new(HistogramVec {
            v: Vec_::new(name, help, labels),
            buckets,
        }))
    }

    /// Adds a collector run at every scrape.
    pub fn collect(&self, c: Collector) {
        self.collectors.lock().expect("metrics lock").push(c);
    }

    /// Every metric as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self.families.lock().expect("metrics lock").clone();
        for f in families {
            f.render(&mut out);
        }
        let mut e = Exposition { out };
        for c in self.collectors.lock().expect("metrics lock").iter() {
            c(&mut e);
        }
        e.out
    }
}

/// Samples written by a collector.
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Writes a gauge family's header.
    pub fn gauge_header(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    /// Writes one sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{name}");
        write_labels(&mut self.out, labels.iter().map(|(k, v)| (*k, *v)));
        let _ = writeln!(self.out, " {}", fmt_value(value));
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    let parts: Vec<String> = labels
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if !parts.is_empty() {
        let _ = write!(out, "{{{}}}", parts.join(","));
    }
}

struct Vec_<T> {
    name: String,
    help: String,
    labels: &'static [&'static str],
    children: Mutex<HashMap<Labels, Arc<T>>>,
}

impl<T: Default> Vec_<T> {
    fn new(name: &str, help: &str, labels: &'static [&'static str]) -> Self {
        Self {
            name: name.to_owned(),
            help: help.to_owned(),
            labels,
            children: Mutex::new(HashMap::new()),
        }
    }

    fn with(&self, values: &[&str]) -> Arc<T> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key: Labels = values.iter().map(|v| v.to_string()).collect();
        self.children
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default()
            .clone()
    }

    fn sorted(&self) -> Vec<(Labels, Arc<T>)> {
        let mut v: Vec<_> = self
            .children
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn header(&self, out: &mut String, kind: &str) {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}",
            self.name, self.help, self.name
        );
    }

    fn labels_of<'a>(&'a self, values: &'a [String]) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.labels
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
    }
}

/// A counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A family of counters.
pub struct CounterVec(Vec_<Counter>);

impl CounterVec {
    /// The counter with these label values.
    pub fn with(&self, values: &[&str]) -> Arc<Counter> {
        self.0.with(values)
    }
}

impl Family for CounterVec {
    fn render(&self, out: &mut String) {
        self.0.header(out, "counter");
        for (labels, c) in self.0.sorted() {
            out.push_str(&self.0.name);
            write_labels(out, self.0.labels_of(&labels));
            let _ = writeln!(out, " {}", c.get());
        }
    }
}

/// A gauge.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A family of gauges.
pub struct GaugeVec(Vec_<Gauge>);

impl GaugeVec {
    /// The gauge with these label values.
    pub fn with(&self, values: &[&str]) -> Arc<Gauge> {
        self.0.with(values)
    }
}

impl Family for GaugeVec {
    fn render(&self, out: &mut String) {
        self.0.header(out, "gauge");
        for (labels, g) in self.0.sorted() {
            out.push_str(&self.0.name);
            write_labels(out, self.0.labels_of(&labels));
            let _ = writeln!(out, " {}", g.get());
        }
    }
}

/// A histogram of observations (seconds).
#[derive(Default)]
pub struct Histogram {
    counts: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn observe_in(&self, buckets: &[f64], v: f64) {
        let mut c = self.counts.lock().expect("metrics lock");
        if c.0.len() != buckets.len() {
            c.0 = vec![0; buckets.len()];
        }
        if let Some(i) = buckets.iter().position(|b| v <= *b) {
            c.0[i] += 1;
        }
        c.1 += v;
        c.2 += 1;
    }
}

/// A histogram bound to its buckets.
#[derive(Clone)]
pub struct HistogramHandle {
    h: Arc<Histogram>,
    buckets: &'static [f64],
}

impl HistogramHandle {
    /// Records a value.
    pub fn observe(&self, v: f64) {
        self.h.observe_in(self.buckets, v);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.h.counts.lock().expect("metrics lock").2
    }
}

/// A family of histograms.
pub struct HistogramVec {
    v: Vec_<Histogram>,
    buckets: &'static [f64],
}

impl HistogramVec {
    /// The histogram with these label values.
    pub fn with(&self, values: &[&str]) -> HistogramHandle {
        HistogramHandle {
            h: self.v.with(values),
            buckets: self.buckets,
        }
    }
}

impl Family for HistogramVec {
    fn render(&self, out: &mut String) {
        self.v.header(out, "histogram");
        for (labels, h) in self.v.sorted() {
            let (counts, sum, count) = h.counts.lock().expect("metrics lock").clone();
            let mut cumulative = 0;
            for (i, b) in self.buckets.iter().enumerate() {
                cumulative += counts.get(i).copied().unwrap_or(0);
                let le = fmt_value(*b);
                let _ = write!(out, "{}_bucket", self.v.name);
                write_labels(out, self.v.labels_of(&labels).chain([("le", le.as_str())]));
                let _ = writeln!(out, " {cumulative}");
            }
            let _ = write!(out, "{}_bucket", self.v.name);
            write_labels(out, self.v.labels_of(&labels).chain([("le", "+Inf")]));
            let _ = writeln!(out, " {count}");
            for (suffix, value) in [("sum", fmt_value(sum)), ("count", count.to_string())] {
                let _ = write!(out, "{}_{suffix}", self.v.name);
                write_labels(out, self.v.labels_of(&labels));
                let _ = writeln!(out, " {value}");
            }
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) from `registry` on `listener`
/// until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: &'static Registry,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut read = 0;
            // Read the request head (small; bounded).
            while read < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf[read..]))
                    .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        read += n;
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..read]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body, kind) = if path == "/metrics" || path.starts_with("/metrics?") {
                (
                    "200 OK",
                    registry.render(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                (
                    "404 Not Found",
                    "only /metrics is served here\n".to_owned(),
                    "text/plain",
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds `addr` and serves metrics from the global registry in the
/// background; returns the bound address.
pub async fn spawn_endpoint(addr: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, global(), std::future::pending()));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_as_prometheus_text() {
        let r = Registry::default();
        let c = r.counter("requests_total", "Requests.", &["verb", "code"]);
        c.with(&["get", "OK"]).inc();
        c.with(&["get", "OK"]).add(2);
        let h = r.histogram("latency_seconds", "Latency.", &["verb"], &[0.1, 1.0]);
        h.with(&["get"]).observe(0.05);
        h.with(&["get"]).observe(0.5);
        h.with(&["get"]).observe(5.0);
        let g = r.gauge("watchers", "Watchers.", &[]);
        g.with(&[]).set(7);
        r.collect(Box::new(|e| {
            e.gauge_header("cache_size", "Size.");
            e.sample("cache_size", &[("kind", "Pod\"x")], 3.0);
        }));
        let text = r.render();
        assert!(
            text.contains(
                "# TYPE requests_total counter\nrequests_total{verb=\"get\",code=\"OK\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{verb=\"get\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{verb=\"get\",le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{verb=\"get\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_count{verb=\"get\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("watchers 7\n"), "{text}");
        assert!(text.contains("cache_size{kind=\"Pod\\\"x\"} 3\n"), "{text}");
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_metrics() {
        let addr = spawn_endpoint("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        global()
            .counter("endpoint_test_total", "Test.", &[])
            .with(&[])
            .inc();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("endpoint_test_total 1"), "{text}");
    }
}
