//! The node agent end to end, for the process and the Docker runtime: a
//! real API server, scheduler and controller manager, and `skiff kubelet`
//! processes running real processes or Docker containers. Pods reach
//! Running and Ready and answer TCP on their IP, their logs and exec go
//! through the API server, failing liveness probes restart them, crashing
//! containers back off, deletion honours the grace period, init containers
//! run first, restart policies decide phases, and a restarted kubelet
//! adopts what it started instead of starting it twice.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use skiff::Resource;
use skiff::api::core::v1::{ExecAction, HttpGetAction, Pod, Probe, ResourceRequirements};
use skiff::api::meta::v1::ObjectMeta;
use skiff::params::DeleteParams;
use skiff_e2e::cluster::{
    Cluster, DockerNetwork, Kubelet, eventually, is_ready, phase, pod_ip, uid, unique,
};
use skiff_e2e::pods::{container, is_root as nix_is_root, node, pod, restarts, waiting_reason};
use skiff_e2e::skiff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` from `ip:port`; the whole response.
async fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// A web server on the pod IP that says hello (with the downward-API
/// variables) on its log and becomes ready once it serves.
fn web(name: &str, node: &str) -> Pod {
    let mut c = container(
        "web",
        "echo \"hello $POD_NAME $POD_NAMESPACE $POD_IP $NODE_NAME\"; \
         mkdir -p www; echo ok > www/index.html; \
         exec busybox httpd -f -p $POD_IP:8080 -h www",
    );
    c.readiness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/index.html".into(),
            port: "8080".into(),
            ..Default::default()
        }),
        period_seconds: 1,
        ..Default::default()
    });
    c.resources = Some(ResourceRequirements {
        limits: [
            ("cpu".to_owned(), "200m".to_owned()),
            ("memory".to_owned(), "64Mi".to_owned()),
        ]
        .into(),
        requests: BTreeMap::new(),
    });
    pod(name, node, vec![c])
}

async fn pod_runs_ready_answers_tcp_and_serves_logs_and_exec(runtime: &str) {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, runtime).await;
    cluster
        .client
        .pods("default")
        .create(&web("web", &k.name))
        .await
        .unwrap();
    let p = cluster
        .pod_until("web", "Running and Ready", |p| {
            phase(p) == "Running" && is_ready(p)
        })
        .await;
    let status = p.status.clone().unwrap();
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.r#type == kind && c.status == "True"),
            "condition {kind} is True: {:?}",
            status.conditions
        );
    }
    let ip = pod_ip(&p);
    assert!(!ip.is_empty() && status.start_time.is_some() && !status.host_ip.is_empty());
    let cs = &status.container_statuses[0];
    assert!(cs.ready && cs.state.as_ref().unwrap().running.is_some());
    assert!(cs.container_id.starts_with(&format!("{runtime}://")));
    // The pod IP answers TCP from the host.
    let reply = http_get(&ip, 8080, "/index.html").await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.") && reply.contains("ok"),
        "{reply}"
    );
    // Its log, through the API server, shows the downward-API variables.
    let logs = skiff(&cluster.server, &["logs", "web"]).await;
    assert!(logs.ok, "skiff logs: {}", logs.stderr);
    assert_eq!(
        logs.stdout.trim(),
        format!("hello web default {ip} {}", k.name)
    );
    let tail = skiff(&cluster.server, &["logs", "pod/web", "--tail", "1"]).await;
    assert_eq!(tail.stdout, logs.stdout);
    // Exec runs in the pod's environment and passes the exit code on.
    let exec = skiff(
        &cluster.server,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo $POD_NAME; echo oops >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(exec.code, Some(3), "{exec:?}");
    assert_eq!(
        (exec.stdout.as_str(), exec.stderr.as_str()),
        ("web\n", "oops\n")
    );
    // Naming a container the pod does not have is a clear error.
    let bad = skiff(&cluster.server, &["logs", "web", "-c", "nope"]).await;
    assert!(
        !bad.ok && bad.stderr.contains("no container \"nope\""),
        "{}",
        bad.stderr
    );
    if runtime == "docker" {
        // CPU and memory limits are Docker limits.
        let id = cs.container_id.trim_start_matches("docker://");
        let out = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
                id,
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "200000000 67108864"
        );
    }
}

async fn failing_liveness_probe_restarts_the_container(runtime: &str) {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, runtime).await;
    let mut c = container(
        "app",
        "echo started; rm -f unhealthy; sleep 2; touch unhealthy; exec sleep 1000",
    );
    c.liveness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["sh".into(), "-c".into(), "test ! -e unhealthy".into()],
        }),
        period_seconds: 1,
        failure_threshold: 1,
        ..Default::default()
    });
    cluster
        .client
        .pods("default")
        .create(&pod("live", &k.name, vec![c]))
        .await
        .unwrap();
    let p = cluster
        .pod_until("live", "restarted by its liveness probe", |p| {
            restarts(p, "app") >= 1
                && p.status.as_ref().unwrap().container_statuses[0]
                    .last_state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some())
        })
        .await;
    let last = p.status.unwrap().container_statuses[0]
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_ne!(last.exit_code, 0, "killed, not completed: {last:?}");
    // The previous instance's log is still readable.
    let prev = skiff(&cluster.server, &["logs", "live", "--previous"]).await;
    assert!(prev.ok && prev.stdout.contains("started"), "{prev:?}");
}

async fn crashing_container_backs_off(runtime: &str) {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, runtime).await;
    cluster
        .client
        .pods("default")
        .create(&pod(
            "crash",
            &k.name,
            vec![container("app", "echo crashing; exit 1")],
        ))
        .await
        .unwrap();
    let p = cluster
        .pod_until(
            "crash",
            "in CrashLoopBackOff with a doubled back-off",
            |p| {
                let s = p.status.as_ref();
                let c = s.and_then(|s| s.container_statuses.first());
                c.and_then(|c| c.state.as_ref()?.waiting.as_ref())
                    .is_some_and(|w| {
                        w.reason == "CrashLoopBackOff" && w.message.contains("back-off 4s")
                    })
            },
        )
        .await;
    let c = &p.status.as_ref().unwrap().container_statuses[0];
    assert!(c.restart_count >= 3, "{c:?}");
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_str()), (1, "Error"));
    assert_eq!(phase(&p), "Running");
    assert!(!is_ready(&p));
}

async fn deletion_stops_the_pod_within_its_grace_period(runtime: &str) {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, runtime).await;
    // It ignores SIGTERM: only SIGKILL after the grace period stops it.
    let mut p = pod(
        "stubborn",
        &k.name,
        vec![container(
            "app",
            "trap '' TERM; echo trapped; while true; do sleep 1; done",
        )],
    );
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(3);
    let pods = cluster.client.pods("default");
    pods.create(&p).await.unwrap();
    let p = cluster
        .pod_until("stubborn", "Running", |p| phase(p) == "Running")
        .await;
    // Running is not yet "ignoring SIGTERM": wait until the trap is set.
    eventually(
        "the TERM trap to be set",
        Duration::from_secs(30),
        async || {
            let out = skiff(&cluster.server, &["logs", "stubborn"]).await;
            out.stdout.contains("trapped").then_some(())
        },
    )
    .await;
    let id = uid(&p);
    assert!(!k.running(&id).is_empty());
    let start = Instant::now();
    let deleted = pods
        .delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    cluster.pod_gone("stubborn", Duration::from_secs(60)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "SIGKILL came before the grace period: {took:?}; the pod when deleted: {:?}",
        deleted.status
    );
    let left = k.running(&id);
    if !left.is_empty() {
        for e in std::fs::read_dir(k.data_dir().join("process/containers")).unwrap() {
            let p = e.unwrap().path();
            eprintln!("RECORD {}", std::fs::read_to_string(&p).unwrap_or_default());
        }
        eprintln!("LEFT {left:?} took {took:?}");
    }
    assert!(left.is_empty(), "nothing of the pod runs any more");

    // One that stops on SIGTERM goes at once.
    pods.create(&pod(
        "polite",
        &k.name,
        vec![container(
            "app",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        )],
    ))
    .await
    .unwrap();
    let p = cluster
        .pod_until("polite", "Running", |p| phase(p) == "Running")
        .await;
    let id = uid(&p);
    pods.delete(
        "polite",
        &DeleteParams {
            grace_period_seconds: Some(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    cluster.pod_gone("polite", Duration::from_secs(25)).await;
    assert!(k.running(&id).is_empty());
}

async fn init_containers_and_restart_policies(runtime: &str) {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, runtime).await;
    let pods = cluster.client.pods("default");
    let mut p = pod(
        "init",
        &k.name,
        vec![container("main", "echo main; exec sleep 1000")],
    );
    p.spec.as_mut().unwrap().init_containers = vec![
        container("first", "sleep 1; echo first"),
        container("second", "echo second"),
    ];
    pods.create(&p).await.unwrap();
    let p = cluster
        .pod_until("init", "Running after its init containers", |p| {
            phase(p) == "Running" && is_ready(p)
        })
        .await;
    let s = p.status.unwrap();
    let ended = |i: usize| {
        s.init_container_statuses[i]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap()
    };
    let (first, second) = (ended(0), ended(1));
    assert_eq!((first.exit_code, second.exit_code), (0, 0));
    assert_eq!(first.reason, "Completed");
    let t = |ts: Option<prost_types::Timestamp>| {
        let ts = ts.unwrap();
        ts.seconds as f64 + ts.nanos as f64 / 1e9
    };
    assert!(t(first.finished_at) <= t(second.started_at), "in order");
    let main = s.container_statuses[0]
        .state
        .clone()
        .unwrap()
        .running
        .unwrap();
    assert!(
        t(second.finished_at) <= t(main.started_at),
        "before the containers"
    );

    // Never: a failure is final. OnFailure: success is final.
    let mut never = pod("never", &k.name, vec![container("app", "exit 3")]);
    never.spec.as_mut().unwrap().restart_policy = "Never".into();
    pods.create(&never).await.unwrap();
    let mut on_failure = pod("onfailure", &k.name, vec![container("app", "exit 0")]);
    on_failure.spec.as_mut().unwrap().restart_policy = "OnFailure".into();
    pods.create(&on_failure).await.unwrap();
    let p = cluster
        .pod_until("never", "Failed", |p| phase(p) == "Failed")
        .await;
    let c = &p.status.as_ref().unwrap().container_statuses[0];
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, c.restart_count), (3, 0));
    let p = cluster
        .pod_until("onfailure", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    assert_eq!(restarts(&p, "app"), 0);
    let ready = p
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "PodCompleted")
    );
}

async fn restarted_kubelet_adopts_its_containers(runtime: &str) {
    let cluster = Cluster::start().await;
    let (_net, mut k) = node(&cluster, runtime).await;
    let pods = cluster.client.pods("default");
    pods.create(&web("web", &k.name)).await.unwrap();
    pods.create(&pod(
        "doomed",
        &k.name,
        vec![container("app", "exec sleep 1000")],
    ))
    .await
    .unwrap();
    let web_before = cluster
        .pod_until("web", "Running and Ready", is_ready)
        .await;
    let doomed = cluster
        .pod_until("doomed", "Running", |p| phase(p) == "Running")
        .await;
    let running_before: HashSet<String> = k.running(&uid(&web_before)).into_iter().collect();
    assert_eq!(running_before.len(), 1);
    k.kill().await;
    // While the kubelet is down, a pod goes away for good.
    pods.delete(
        "doomed",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        !k.running(&uid(&doomed)).is_empty(),
        "its container outlives the kubelet"
    );
    k.restart().await;
    // The orphan is cleaned up; the running pod is found again, not restarted.
    eventually(
        "the deleted pod's container to be removed",
        Duration::from_secs(60),
        async || k.running(&uid(&doomed)).is_empty().then_some(()),
    )
    .await;
    pods.create(&pod(
        "after",
        &k.name,
        vec![container("app", "exec sleep 1000")],
    ))
    .await
    .unwrap();
    cluster
        .pod_until("after", "Running (the kubelet is back)", |p| {
            phase(p) == "Running"
        })
        .await;
    let web_after = pods.get("web").await.unwrap();
    let (b, a) = (
        &web_before.status.as_ref().unwrap().container_statuses[0],
        &web_after.status.as_ref().unwrap().container_statuses[0],
    );
    assert_eq!(a.container_id, b.container_id, "the same container");
    assert_eq!(a.restart_count, 0);
    assert!(is_ready(&web_after));
    let running_after: HashSet<String> = k.running(&uid(&web_after)).into_iter().collect();
    assert_eq!(running_after, running_before, "never run twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pod_runs_ready_answers_tcp_and_serves_logs_and_exec() {
    pod_runs_ready_answers_tcp_and_serves_logs_and_exec("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pod_runs_ready_answers_tcp_and_serves_logs_and_exec() {
    pod_runs_ready_answers_tcp_and_serves_logs_and_exec("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_failing_liveness_probe_restarts_the_container() {
    failing_liveness_probe_restarts_the_container("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_failing_liveness_probe_restarts_the_container() {
    failing_liveness_probe_restarts_the_container("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_crashing_container_backs_off() {
    crashing_container_backs_off("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_crashing_container_backs_off() {
    crashing_container_backs_off("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_deletion_stops_the_pod_within_its_grace_period() {
    deletion_stops_the_pod_within_its_grace_period("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_deletion_stops_the_pod_within_its_grace_period() {
    deletion_stops_the_pod_within_its_grace_period("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_init_containers_run_in_order_and_restart_policies_decide_phases() {
    init_containers_and_restart_policies("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_init_containers_run_in_order_and_restart_policies_decide_phases() {
    init_containers_and_restart_policies("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_restarted_kubelet_adopts_its_containers_and_removes_orphans() {
    restarted_kubelet_adopts_its_containers("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_restarted_kubelet_adopts_its_containers_and_removes_orphans() {
    restarted_kubelet_adopts_its_containers("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_missing_image_waits_as_its_pull_policy_says() {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "docker").await;
    for (name, policy, reason) in [
        ("never", "Never", "ErrImageNeverPull"),
        ("ifnotpresent", "", "ErrImagePull"),
    ] {
        let mut c = container("app", "true");
        c.image = "skiff-test/not-built-here:1".into();
        c.image_pull_policy = policy.into();
        cluster
            .client
            .pods("default")
            .create(&pod(name, &k.name, vec![c]))
            .await
            .unwrap();
        let p = cluster
            .pod_until(name, "waiting for its image", |p| {
                waiting_reason(p, "app").as_deref() == Some(reason)
            })
            .await;
        let w = p.status.unwrap().container_statuses[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert!(
            w.message.contains("skiff-test/not-built-here:1"),
            "{}",
            w.message
        );
        assert_eq!(
            phase(&cluster.client.pods("default").get(name).await.unwrap()),
            "Pending"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_registers_its_node_and_renews_its_lease() {
    let cluster = Cluster::start().await;
    let name = unique("node");
    let _k = Kubelet::start(
        &cluster,
        &name,
        "process",
        &[
            "--cpu",
            "3",
            "--memory",
            "5Gi",
            "--max-pods",
            "17",
            "--node-labels",
            "zone=a,disk=ssd",
            "--register-with-taints",
            "dedicated=test:NoSchedule",
        ],
    )
    .await;
    let node = cluster.node_ready(&name).await;
    let spec = node.spec.clone().unwrap();
    let status = node.status.clone().unwrap();
    assert_eq!(status.capacity["cpu"], "3");
    assert_eq!(status.allocatable["memory"], "5Gi");
    assert_eq!(status.capacity["pods"], "17");
    let labels = &node.meta().labels;
    assert_eq!(
        (labels["zone"].as_str(), labels["disk"].as_str()),
        ("a", "ssd")
    );
    assert_eq!(labels["kubernetes.io/hostname"], name);
    assert!(
        spec.taints
            .iter()
            .any(|t| t.key == "dedicated" && t.value == "test" && t.effect == "NoSchedule")
    );
    let types: HashSet<&str> = status
        .conditions
        .iter()
        .map(|c| c.r#type.as_str())
        .collect();
    assert_eq!(
        types,
        HashSet::from(["Ready", "MemoryPressure", "DiskPressure"])
    );
    assert!(status.addresses.iter().any(|a| a.r#type == "InternalIP"));
    assert!(
        status
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port
            > 0
    );
    assert!(
        status
            .node_info
            .unwrap()
            .container_runtime_version
            .starts_with("process://")
    );
    assert!(!spec.pod_cidr.is_empty(), "node IPAM gave it a pod CIDR");
    // The lease is renewed (every second here).
    let leases = cluster.client.leases("skiff-node-lease");
    let renew =
        |l: &skiff::api::coordination::v1::Lease| l.spec.as_ref().and_then(|s| s.renew_time);
    let first = eventually("the node lease", Duration::from_secs(30), async || {
        renew(&leases.get_opt(&name).await.ok()??)
    })
    .await;
    eventually(
        "the lease to be renewed",
        Duration::from_secs(30),
        async || {
            let t = renew(&leases.get_opt(&name).await.ok()??)?;
            (t != first).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_process_kubelets_give_distinct_pod_ips() {
    let cluster = Cluster::start().await;
    let (_n1, a) = node(&cluster, "process").await;
    let (_n2, b) = node(&cluster, "process").await;
    let pods = cluster.client.pods("default");
    let mut names = Vec::new();
    for (i, k) in [&a, &b, &a, &b, &a, &b].iter().enumerate() {
        let name = format!("web-{i}");
        pods.create(&web(&name, &k.name)).await.unwrap();
        names.push(name);
    }
    let mut ips = HashSet::new();
    let mut nodes = HashSet::new();
    for name in &names {
        let p = cluster.pod_until(name, "Ready", is_ready).await;
        let ip = pod_ip(&p);
        assert!(ip.starts_with("127."), "{ip}");
        // Every pod answers on its own address.
        let reply = http_get(&ip, 8080, "/index.html").await.unwrap();
        assert!(reply.contains("ok"));
        ips.insert(ip);
        nodes.insert(p.spec.unwrap().node_name);
    }
    assert_eq!(ips.len(), names.len(), "distinct pod IPs: {ips:?}");
    assert_eq!(nodes.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_nodes_in_containers_run_pods_that_reach_each_other_across_nodes() {
    use skiff_e2e::cluster::{Machine, reserve_range};
    let machines = DockerNetwork::create("skiff-machines");
    let pods_net = DockerNetwork::named("skiff-pods-test");
    // Nodes get blocks of the pod network's subnet: each node's pods have
    // addresses from its own range.
    let (cidr, lock) = reserve_range("10", 200, 50);
    let cluster = Cluster::start_with(machines.gateway(), cidr.clone(), lock).await;
    let (a, b) = (unique("node-a"), unique("node-b"));
    let extra = ["--docker-network-cidr", cidr.as_str()];
    let ma = Machine::start(&a, &machines.name, &cluster.server, &pods_net.name, &extra);
    let mb = Machine::start(&b, &machines.name, &cluster.server, &pods_net.name, &extra);
    let mut ranges = BTreeMap::new();
    for (m, name) in [(&ma, &a), (&mb, &b)] {
        let n = tokio::time::timeout(Duration::from_secs(90), cluster.node_ready(name))
            .await
            .unwrap_or_else(|_| panic!("node {name} Ready; its log:\n{}", m.logs()));
        let ip = &n.status.as_ref().unwrap().addresses[0].address;
        assert!(!ip.starts_with("127."), "the machine's own address: {ip}");
        ranges.insert(name.clone(), n.spec.unwrap().pod_cidr);
    }
    let in_range = |ip: &str, node: &str| {
        // A /24 of the node's: the first three octets match.
        let range = &ranges[node];
        let prefix = range.rsplit_once('.').unwrap().0;
        assert!(
            ip.starts_with(&format!("{prefix}.")),
            "pod IP {ip} is in {node}'s range {range}"
        );
    };
    let pods = cluster.client.pods("default");
    pods.create(&web("server", &a)).await.unwrap();
    let server = cluster.pod_until("server", "Ready", is_ready).await;
    let ip = pod_ip(&server);
    in_range(&ip, &a);
    // A pod on the other node reaches it.
    pods.create(&pod(
        "client",
        &b,
        vec![container(
            "app",
            &format!(
                "until wget -q -O - http://{ip}:8080/index.html; do sleep 0.2; done; exec sleep 1000"
            ),
        )],
    ))
    .await
    .unwrap();
    let client = cluster
        .pod_until("client", "Running", |p| phase(p) == "Running")
        .await;
    in_range(&pod_ip(&client), &b);
    eventually(
        "the client pod's log to show the server's page",
        Duration::from_secs(60),
        async || {
            let out = skiff(&cluster.server, &["logs", "client"]).await;
            (out.ok && out.stdout.trim() == "ok").then_some(())
        },
    )
    .await;
    let exec = skiff(
        &cluster.server,
        &[
            "exec",
            "client",
            "--",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{ip}:8080/index.html"),
        ],
    )
    .await;
    assert_eq!((exec.code, exec.stdout.trim()), (Some(0), "ok"), "{exec:?}");
    // The host reaches pods too.
    assert!(
        http_get(&ip, 8080, "/index.html")
            .await
            .unwrap()
            .contains("ok")
    );

    // A machine that dies is the node lifecycle controller's: the node goes
    // Unknown and tainted, and its pods are evicted.
    mb.kill();
    let nodes = cluster.client.nodes();
    eventually(
        "node b to be Unknown and unreachable",
        Duration::from_secs(60),
        async || {
            let n = nodes.get(&b).await.ok()?;
            let unknown = n
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "Unknown");
            let tainted = n
                .spec
                .as_ref()?
                .taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable");
            (unknown && tainted).then_some(())
        },
    )
    .await;
    cluster
        .pod_until("client", "evicted from the dead node", |p| {
            p.meta().deletion_timestamp.is_some()
        })
        .await;
    let a_node = nodes.get(&a).await.unwrap();
    assert!(is_node_ready(&a_node), "the other node is unaffected");
}

fn is_node_ready(n: &skiff::api::core::v1::Node) -> bool {
    n.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

async fn startup_probe_holds_readiness_until_it_passes(runtime: &str) {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, runtime).await;
    let mut c = container("app", "rm -f started; exec sleep 1000");
    c.startup_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["test".into(), "-e".into(), "started".into()],
        }),
        period_seconds: 1,
        failure_threshold: 600,
        ..Default::default()
    });
    cluster
        .client
        .pods("default")
        .create(&pod("slow", &k.name, vec![c]))
        .await
        .unwrap();
    let p = cluster
        .pod_until("slow", "Running", |p| phase(p) == "Running")
        .await;
    let cs = &p.status.as_ref().unwrap().container_statuses[0];
    assert_eq!(cs.started, Some(false));
    assert!(!is_ready(&p), "not ready before its startup probe passes");
    let touch = skiff(&cluster.server, &["exec", "slow", "--", "touch", "started"]).await;
    assert!(touch.ok, "{touch:?}");
    let p = cluster
        .pod_until("slow", "Ready once started", is_ready)
        .await;
    assert_eq!(p.status.unwrap().container_statuses[0].started, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_startup_probe_holds_readiness_until_it_passes() {
    startup_probe_holds_readiness_until_it_passes("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_startup_probe_holds_readiness_until_it_passes() {
    startup_probe_holds_readiness_until_it_passes("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines_as_they_come() {
    use tokio::io::AsyncBufReadExt;
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "process").await;
    cluster
        .client
        .pods("default")
        .create(&pod(
            "ticker",
            &k.name,
            vec![container(
                "app",
                "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done",
            )],
        ))
        .await
        .unwrap();
    cluster
        .pod_until("ticker", "Running", |p| phase(p) == "Running")
        .await;
    let mut follow = tokio::process::Command::new(skiff_e2e::skiff_bin())
        .args([
            "--server",
            &cluster.server,
            "logs",
            "ticker",
            "-f",
            "--tail",
            "1",
        ])
        .env("SKIFF_CONFIG", "/nonexistent/skiff-test-config")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < 5 {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the stream stays open");
            seen.push(line);
        }
    })
    .await
    .expect("five lines arrive");
    let numbers: Vec<u32> = seen
        .iter()
        .map(|l| l.trim_start_matches("line ").parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive lines: {seen:?}"
    );
    assert!(follow.try_wait().unwrap().is_none(), "still following");
}

/// The process runtime runs each container with mounts in its own mount
/// namespace (the kubelet runs as root here, as Kubernetes' does): the
/// ConfigMap's keys are at `mountPath`, updates reach the files through
/// the atomic `..data` swap, exec sees the same mounts, and nothing of it
/// shows on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pods_see_their_config_map_at_its_mount_path_and_its_updates() {
    use skiff::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
    if !nix_is_root() {
        eprintln!("skipped: mount namespaces need root");
        return;
    }
    let mount_point_existed = std::path::Path::new("/etc/config").exists();
    let cluster = Cluster::start().await;
    let (_net, kubelet) = node(&cluster, "process").await;
    let configs = cluster.client.api::<ConfigMap>("default");
    let cm = ConfigMap {
        metadata: Some(ObjectMeta {
            name: "special-config".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        data: [
            ("SPECIAL_LEVEL".to_owned(), "very".to_owned()),
            ("SPECIAL_TYPE".to_owned(), "charm".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    configs.create(&cm).await.unwrap();
    let mut c = container(
        "test-container",
        "ls /etc/config/; echo \"env=$CFG_SPECIAL_TYPE key=$LEVEL\"; \
         while true; do echo \"level=$(cat /etc/config/SPECIAL_LEVEL)\"; sleep 0.2; done",
    );
    // envFrom with a prefix, and one key by configMapKeyRef.
    c.env_from = vec![skiff::api::core::v1::EnvFromSource {
        prefix: "CFG_".into(),
        config_map_ref: Some(skiff::api::core::v1::ConfigMapEnvSource {
            name: "special-config".into(),
            optional: None,
        }),
        secret_ref: None,
    }];
    c.env = vec![skiff::api::core::v1::EnvVar {
        name: "LEVEL".into(),
        value_from: Some(skiff::api::core::v1::EnvVarSource {
            config_map_key_ref: Some(skiff::api::core::v1::ConfigMapKeySelector {
                name: "special-config".into(),
                key: "SPECIAL_LEVEL".into(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    c.volume_mounts = vec![VolumeMount {
        name: "config-volume".into(),
        mount_path: "/etc/config".into(),
        read_only: true,
        ..Default::default()
    }];
    let mut p = pod("cm-reader", &kubelet.name, vec![c]);
    p.spec.as_mut().unwrap().volumes = vec![Volume {
        name: "config-volume".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: "special-config".into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    cluster.client.pods("default").create(&p).await.unwrap();
    cluster
        .pod_until("cm-reader", "Running", |p| phase(p) == "Running")
        .await;
    let logs = eventually("the keys listed", Duration::from_secs(60), async || {
        let out = skiff(&cluster.server, &["logs", "cm-reader"]).await;
        out.stdout.contains("level=very").then_some(out.stdout)
    })
    .await;
    assert!(
        logs.starts_with("SPECIAL_LEVEL\nSPECIAL_TYPE\nenv=charm key=very\n"),
        "{logs}"
    );
    // Exec runs in the same mount namespace.
    let exec = skiff(
        &cluster.server,
        &["exec", "cm-reader", "--", "cat", "/etc/config/SPECIAL_TYPE"],
    )
    .await;
    assert_eq!(exec.stdout, "charm", "{exec:?}");
    // An update reaches the file within the kubelet's sync period.
    let mut live = configs.get("special-config").await.unwrap();
    live.data.insert("SPECIAL_LEVEL".into(), "extremely".into());
    configs.update(&live).await.unwrap();
    eventually(
        "the update to reach the file",
        Duration::from_secs(60),
        async || {
            let out = skiff(&cluster.server, &["logs", "cm-reader", "--tail", "1"]).await;
            out.stdout.contains("level=extremely").then_some(())
        },
    )
    .await;
    // The mount stayed inside the pod's namespace; the mount point is empty on the host.
    assert!(!std::path::Path::new("/etc/config/SPECIAL_LEVEL").exists());
    cluster
        .client
        .pods("default")
        .delete("cm-reader", &DeleteParams::default())
        .await
        .unwrap();
    cluster.pod_gone("cm-reader", Duration::from_secs(30)).await;
    // A key that does not exist holds the container, with Kubernetes' message.
    let mut c = container("waits", "exec sleep 1000");
    c.env = vec![skiff::api::core::v1::EnvVar {
        name: "X".into(),
        value_from: Some(skiff::api::core::v1::EnvVarSource {
            config_map_key_ref: Some(skiff::api::core::v1::ConfigMapKeySelector {
                name: "special-config".into(),
                key: "NOPE".into(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    cluster
        .client
        .pods("default")
        .create(&pod("held", &kubelet.name, vec![c]))
        .await
        .unwrap();
    let held = cluster
        .pod_until("held", "CreateContainerConfigError", |p| {
            waiting_reason(p, "waits").as_deref() == Some("CreateContainerConfigError")
        })
        .await;
    let message = held.status.unwrap().container_statuses[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message;
    assert_eq!(
        message,
        "couldn't find key NOPE in ConfigMap default/special-config"
    );
    if !mount_point_existed {
        eventually(
            "the mount point made on the host to go",
            Duration::from_secs(30),
            async || (!std::path::Path::new("/etc/config").exists()).then_some(()),
        )
        .await;
    }
}
