//! Every `skiff-loadtest` scenario runs in a small configuration (seconds)
//! and prints a JSON summary with its figures; the numbers themselves are
//! not asserted — benchmarks measure, tests check behaviour.

use std::path::PathBuf;

use serde_json::Value;
use skiff_apiserver::testing::EtcdServer;
use tokio::process::Command;

fn loadtest_bin() -> PathBuf {
    let skiff = skiff_e2e::skiff_bin();
    let bin = skiff.with_file_name("skiff-loadtest");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

/// Runs `skiff-loadtest <args> --json`; returns its summary.
async fn run(args: &[&str]) -> Value {
    let out = Command::new(loadtest_bin())
        .args(args)
        .arg("--json")
        .env("SKIFF_BIN", skiff_e2e::skiff_bin())
        .output()
        .await
        .expect("run skiff-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "skiff-loadtest {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn number(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v}"))
}

fn assert_latency(v: &Value, key: &str) {
    for p in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "count"] {
        number(v, &format!("/{key}/{p}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_summaries_parse_for_skiff_and_for_etcd() {
    let v = run(&[
        "watch",
        "--watchers",
        "20",
        "--writers",
        "2",
        "--duration",
        "1s",
    ])
    .await;
    assert_eq!(v["scenario"], "watch");
    assert!(number(&v, "/events_delivered") > 0.0);
    assert_eq!(
        number(&v, "/events_delivered"),
        number(&v, "/events_expected")
    );
    number(&v, "/events_per_sec");
    number(&v, "/server_rss_bytes");
    assert_latency(&v, "latency");

    let etcd = EtcdServer::start().await;
    let target = format!("etcd://{}", etcd.endpoint.trim_start_matches("http://"));
    let v = run(&[
        "watch",
        "--watchers",
        "20",
        "--writers",
        "2",
        "--duration",
        "1s",
        "--target",
        &target,
    ])
    .await;
    assert_eq!(v["target"], target.as_str());
    assert!(number(&v, "/events_delivered") > 0.0);
    assert_latency(&v, "latency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_summaries_parse_for_skiff_and_for_etcd() {
    let v = run(&["write", "--writers", "4", "--duration", "1s"]).await;
    assert_eq!(v["scenario"], "write");
    assert!(number(&v, "/creates_per_sec") > 0.0);
    for op in ["create", "update", "delete"] {
        assert_latency(&v, &format!("{op}_latency"));
    }
    assert_eq!(number(&v, "/errors"), 0.0);

    let etcd = EtcdServer::start().await;
    let target = format!("etcd://{}", etcd.endpoint.trim_start_matches("http://"));
    let v = run(&[
        "write",
        "--writers",
        "4",
        "--duration",
        "1s",
        "--ops",
        "create",
        "--target",
        &target,
    ])
    .await;
    assert!(number(&v, "/creates_per_sec") > 0.0);
    assert_latency(&v, "create_latency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_summary_parses() {
    let v = run(&[
        "list",
        "--objects",
        "300",
        "--lists",
        "3",
        "--page-size",
        "100",
    ])
    .await;
    assert_eq!(v["scenario"], "list");
    for mode in ["list_rv0", "list_consistent", "list_paginated"] {
        assert_latency(&v, &format!("{mode}_latency"));
        assert!(number(&v, &format!("/{mode}_items_per_sec")) > 0.0);
    }
    // The server's memory before and after the fill, and per object.
    assert!(number(&v, "/server_rss_empty_bytes") > 0.0);
    assert!(number(&v, "/server_rss_filled_bytes") > 0.0);
    assert!(number(&v, "/server_rss_per_object_bytes") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_summary_parses() {
    let v = run(&["scheduler", "--nodes", "20", "--pods", "100"]).await;
    assert_eq!(v["scenario"], "scheduler");
    assert_eq!(number(&v, "/pods_bound"), 100.0);
    assert!(number(&v, "/pods_bound_per_sec") > 0.0);
    assert_latency(&v, "latency_create_to_bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn density_summary_parses_and_every_pod_runs() {
    let v = run(&[
        "density",
        "--nodes",
        "5",
        "--pods",
        "50",
        "--timeout",
        "120s",
    ])
    .await;
    assert_eq!(v["scenario"], "density");
    assert_eq!(number(&v, "/pods_running"), 50.0);
    assert_latency(&v, "pod_startup_latency");
    assert_latency(&v, "scheduling_latency");
    assert_latency(&v, "create_latency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_summary_parses() {
    let v = run(&["proxy", "--connections", "1", "--duration", "1s"]).await;
    assert!(number(&v, "/proxied_round_trips_s") > 0.0, "{v}");
    assert!(number(&v, "/connection_rate_ratio") > 0.0, "{v}");
    assert_latency(&v, "proxied_latency");
}

/// The server-level fuzzer reaches the API's methods through reflection
/// against a server with RBAC on (embedded storage and etcd) and finds
/// nothing a client can break in a few seconds; its table counts codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_reaches_the_methods_through_reflection_and_finds_no_violation_on_both_backends() {
    let etcd = EtcdServer::start().await;
    for storage in [
        vec!["--storage", "embedded"],
        vec!["--storage", "etcd", "--etcd-endpoints", &etcd.endpoint],
    ] {
        let mut args = vec!["fuzz", "--duration", "3s", "--seed", "7"];
        args.extend(storage.iter().copied());
        let v = run(&args).await;
        assert_eq!(v["scenario"], "fuzz");
        assert!(number(&v, "/calls") > 0.0, "{v}");
        assert_eq!(v["violations"].as_array().map(Vec::len), Some(0), "{v}");
        let methods = v["methods"].as_object().expect("methods");
        assert!(!methods.is_empty(), "{v}");
        assert!(
            methods.keys().all(|m| !m.contains("skiff.kubelet.")),
            "only what the API server serves is listed: {v}"
        );
    }
}
