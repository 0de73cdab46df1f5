//! `/metrics` of every component, each its own process: the text parses as
//! Prometheus exposition format and the figures move when work is done.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff::api::core::v1::{Container, Pod, PodSpec, Service, ServicePort, ServiceSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use skiff::testing::eventually;
use skiff_e2e::SkiffProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Samples of a Prometheus text page: `name{labels}` → value. Panics on
/// any line that is not valid exposition format.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.split_whitespace();
            let (Some(keyword), Some(name)) = (words.next(), words.next()) else {
                panic!("line {i}: bad comment {line:?}");
            };
            assert!(valid_name(name), "line {i}: bad metric name {name:?}");
            if keyword == "TYPE" {
                let t = words.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "line {i}: bad type {t:?}"
                );
                assert!(
                    typed.insert(name.to_owned()),
                    "line {i}: {name} typed twice"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("line {i}: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {i}: bad value {v:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "line {i}: bad metric name {name:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "line {i}: bad labels {labels:?}"
            );
            for pair in split_labels(&labels[1..labels.len() - 1]) {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("line {i}: {pair:?}"));
                assert!(valid_name(k), "line {i}: bad label name {k:?}");
                assert!(
                    v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                    "line {i}: {v:?}"
                );
            }
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "line {i}: {series} twice"
        );
    }
    samples
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

async fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    parse(body)
}

/// The sum of every sample of `name` whose series contains each of `having`.
fn total(samples: &BTreeMap<String, f64>, name: &str, having: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && having.iter().all(|h| k.contains(h))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn until_metric(addr: &str, name: &str, having: &[&str], above: f64) -> f64 {
    let what = format!("{name}{having:?} on {addr} to pass {above}");
    eventually(&what, Duration::from_secs(60), async || {
        Some(total(&scrape(addr).await, name, having)).filter(|v| *v > above)
    })
    .await
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            labels: [("app".to_owned(), "m".to_owned())].into(),
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_serves_prometheus_metrics_that_move_with_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store").display().to_string();
    let m = ["--metrics-listen", "127.0.0.1:0"];
    let (_api, v) = SkiffProcess::start_printing(
        &[
            "apiserver",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            m[0],
            m[1],
        ],
        &["listening on ", "metrics on "],
    )
    .await;
    let (server, api_metrics) = (v[0].clone(), v[1].clone());
    let before = scrape(&api_metrics).await;
    let client = Client::connect_to(&server).await.unwrap();
    for i in 0..3 {
        client
            .pods("default")
            .create(&pod(&format!("p{i}")))
            .await
            .unwrap();
    }
    client.pods("default").get("p0").await.unwrap();
    let _ = client.pods("default").get("absent").await;
    let after = scrape(&api_metrics).await;
    let created = |s: &BTreeMap<String, f64>| {
        total(
            s,
            "apiserver_request_total",
            &["verb=\"create\"", "resource=\"pods\"", "code=\"Ok\""],
        )
    };
    assert_eq!(created(&after) - created(&before), 3.0, "{after:?}");
    assert!(
        total(
            &after,
            "apiserver_request_total",
            &["verb=\"get\"", "code=\"NotFound\""]
        ) >= 1.0
    );
    assert!(
        total(
            &after,
            "apiserver_request_duration_seconds_count",
            &["verb=\"create\"", "resource=\"pods\""]
        ) >= 3.0
    );
    assert!(
        total(
            &after,
            "etcd_request_duration_seconds_count",
            &["operation=\"create\""]
        ) >= 3.0
    );
    assert!(total(&after, "apiserver_watch_cache_objects", &["kind=\"Pod\""]) >= 3.0);
    assert!(after.contains_key("apiserver_watch_cache_resource_version{kind=\"Pod\"}"));

    // A node, the scheduler, the controller manager and the proxy, each a process.
    let s = ["--server", server.as_str()];
    let kubelet_dir = dir.path().join("node").display().to_string();
    let (_kubelet, v) = SkiffProcess::start_printing(
        &[
            "kubelet",
            "--node-name",
            "m1",
            "--runtime",
            "sim",
            "--pod-cidr",
            "127.77.0.0/24",
            "--data-dir",
            &kubelet_dir,
            s[0],
            s[1],
            m[0],
            m[1],
        ],
        &["metrics on "],
    )
    .await;
    let kubelet_metrics = v[0].clone();
    let (_scheduler, v) = SkiffProcess::start_printing(
        &["scheduler", "--leader-elect=false", s[0], s[1], m[0], m[1]],
        &["metrics on "],
    )
    .await;
    let scheduler_metrics = v[0].clone();
    let (_cm, v) = SkiffProcess::start_printing(
        &[
            "controller-manager",
            "--leader-elect=false",
            s[0],
            s[1],
            m[0],
            m[1],
        ],
        &["metrics on "],
    )
    .await;
    let cm_metrics = v[0].clone();
    let (_proxy, v) =
        SkiffProcess::start_printing(&["proxy", s[0], s[1], m[0], m[1]], &["metrics on "]).await;
    let proxy_metrics = v[0].clone();

    until_metric(
        &scheduler_metrics,
        "scheduler_schedule_attempts_total",
        &["result=\"scheduled\""],
        2.0,
    )
    .await;
    // Bound pods report their time from queue to binding, the framework's
    // extension points their time, and the queue its pending pods by queue.
    until_metric(
        &scheduler_metrics,
        "scheduler_pod_scheduling_duration_seconds_count",
        &[],
        2.0,
    )
    .await;
    for point in ["PreFilter", "Filter", "Score", "Bind"] {
        let having = [
            &format!("extension_point=\"{point}\"")[..],
            "status=\"Success\"",
        ];
        until_metric(
            &scheduler_metrics,
            "scheduler_framework_extension_point_duration_seconds_count",
            &having,
            1.0,
        )
        .await;
    }
    let scheduler_samples = scrape(&scheduler_metrics).await;
    for queue in ["active", "backoff", "unschedulable"] {
        let series = format!("scheduler_pending_pods{{queue=\"{queue}\"}}");
        assert_eq!(
            scheduler_samples.get(&series),
            Some(&0.0),
            "{series}: every pod is bound, none pending"
        );
    }
    until_metric(
        &kubelet_metrics,
        "kubelet_pod_start_duration_seconds_count",
        &[],
        2.0,
    )
    .await;
    // The controller manager's queues take work (service accounts, endpoints…).
    client
        .services("default")
        .create(&Service {
            metadata: Some(ObjectMeta {
                name: "m".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                selector: [("app".to_owned(), "m".to_owned())].into(),
                ports: vec![ServicePort {
                    port: 8080,
                    target_port: "8080".into(),
                    protocol: "TCP".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    until_metric(
        &cm_metrics,
        "workqueue_adds_total",
        &["name=\"services\""],
        0.0,
    )
    .await;
    until_metric(
        &cm_metrics,
        "workqueue_queue_duration_seconds_count",
        &[],
        0.0,
    )
    .await;
    // The proxy listens once the service has ready endpoints; the sim pods
    // run nothing, so connections find no endpoint — and are counted.
    let svc = client.services("default").get("m").await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip;
    let what = format!("the proxy to count a connection to {ip}:8080");
    eventually(&what, Duration::from_secs(60), async || {
        let _ = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await;
        let seen = total(
            &scrape(&proxy_metrics).await,
            "proxy_tcp_connections_total",
            &[],
        );
        (seen > 0.0).then_some(())
    })
    .await;
    // Watches are counted by kind on the server.
    let api = scrape(&api_metrics).await;
    assert!(
        total(&api, "apiserver_registered_watchers", &["kind=\"Pod\""]) >= 1.0,
        "{api:?}"
    );
}
