//! The audit log (one JSON line per request: who, what, where, the result
//! and the latency) and the request metrics Kubernetes users chart
//! (`apiserver_request_total`, `apiserver_request_duration_seconds`).
//! Owns what is recorded about a finished request; must not decide whether
//! a request is let in (that is authentication, limits and authorization).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::split_path;
use crate::authn::UserInfo;

/// How much of the request the audit log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLevel {
    /// Nothing.
    None,
    /// Who, what, where, the result and the latency.
    Metadata,
    /// Also the request's selectors and options (never object bodies, so
    /// never a token or a Secret's data).
    Request,
}

impl std::str::FromStr for AuditLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "metadata" => Ok(Self::Metadata),
            "request" => Ok(Self::Request),
            _ => Err(format!("{s:?}: use none, metadata or request")),
        }
    }
}

/// The audit log: one JSON object per line.
pub struct AuditLog {
    level: AuditLevel,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl AuditLog {
    /// Appends to `path` at `level`.
    pub fn open(path: &Path, level: AuditLevel) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            level,
            out: Mutex::new(std::io::BufWriter::new(file)),
        })
    }

    fn write(&self, line: &serde_json::Value) {
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Where a request acts, filled in by its handler for the audit log.
#[derive(Debug, Default)]
pub struct AuditTarget {
    inner: Mutex<(String, String, Option<serde_json::Value>)>,
}

impl AuditTarget {
    /// Records the namespace and name the request acts on.
    pub fn set(&self, namespace: &str, name: &str) {
        let mut t = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.0 = namespace.to_owned();
        t.1 = name.to_owned();
    }

    /// Records the request's options (selectors, versions) for the Request level.
    pub fn set_request(&self, request: serde_json::Value) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .2 = Some(request);
    }
}

/// The audit verb and kind of a gRPC path.
pub(super) fn verb_and_kind(path: &str) -> (String, String) {
    let (service, method) = split_path(path);
    let kind = service
        .rsplit('.')
        .next()
        .unwrap_or("")
        .trim_end_matches("Service")
        .to_owned();
    let verb = [
        "Create", "Get", "List", "Watch", "Update", "Delete", "Bind", "Scale", "Exec",
    ]
    .iter()
    .find(|v| method.starts_with(*v))
    .map(|v| v.to_ascii_lowercase())
    .unwrap_or_else(|| method.to_owned());
    (verb, kind)
}

/// Request counters and latencies (Kubernetes' names).
struct RequestMetrics {
    total: Arc<skiff::metrics::CounterVec>,
    duration: Arc<skiff::metrics::HistogramVec>,
}

fn request_metrics() -> &'static RequestMetrics {
    static METRICS: std::sync::OnceLock<RequestMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let r = skiff::metrics::global();
        RequestMetrics {
            total: r.counter(
                "apiserver_request_total",
                "Requests by verb, resource and gRPC status.",
                &["verb", "resource", "code"],
            ),
            duration: r.histogram(
                "apiserver_request_duration_seconds",
                "Time to answer (to the first response for watches), by verb and resource.",
                &["verb", "resource"],
                skiff::metrics::LATENCY_BUCKETS,
            ),
        }
    })
}

/// Counts a finished request and writes its audit line.
pub(super) fn record(
    log: Option<&AuditLog>,
    path: &str,
    user: Option<&UserInfo>,
    target: &AuditTarget,
    code: i32,
    started: Instant,
) {
    {
        let (verb, kind) = verb_and_kind(path);
        let resource = skiff::KindInfo::find(&kind)
            .map(|k| k.plural)
            .unwrap_or(kind.as_str());
        let m = request_metrics();
        let status = format!("{:?}", tonic::Code::from_i32(code));
        m.total.with(&[&verb, resource, &status]).inc();
        m.duration
            .with(&[&verb, resource])
            .observe_duration(started.elapsed());
    }
    let Some(log) = log else { return };
    if log.level == AuditLevel::None {
        return;
    }
    let (verb, kind) = verb_and_kind(path);
    let (namespace, name, request) = target
        .inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut line = serde_json::json!({
        "ts": ts,
        "user": user.map(|u| u.name.as_str()).unwrap_or(""),
        "groups": user.map(|u| u.groups.clone()).unwrap_or_default(),
        "verb": verb,
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "method": path,
        "code": code,
        "status": format!("{:?}", tonic::Code::from_i32(code)),
        "latency_ms": (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
    });
    if log.level == AuditLevel::Request
        && let Some(r) = request
        && let Some(fields) = line.as_object_mut()
    {
        fields.insert("request".to_owned(), r);
    }
    log.write(&line);
}
