//! `skiff up` end to end, through real processes: the README's example
//! (a Deployment of three HTTP servers and its Service) applies as written,
//! rolls out, and answers through its cluster IP from all three pods; the
//! proxy routes around a pod whose process dies and follows the ReplicaSet
//! when a pod is replaced; ClientIP affinity holds a client; a deleted
//! Service's listener goes; and a restarted `skiff up` finds every object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{Endpoints, Pod};
use skiff::params::{DeleteParams, ListParams};
use skiff_e2e::cluster::{Up, eventually, is_ready};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

fn example() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/web.yaml")
        .display()
        .to_string()
}

/// The page a connection to `addr` (from `from`) gets: the pod's greeting.
async fn get(addr: SocketAddr, from: Option<[u8; 4]>) -> std::io::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut s = match from {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((ip, 0)))?;
            socket.connect(addr).await?
        }
    };
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    // "hello from POD (IP)"
    out.lines()
        .find_map(|l| l.strip_prefix("hello from "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| std::io::Error::other(format!("unexpected response {out:?}")))
}

async fn rolled_out(up: &Up) {
    let out = up
        .skiff(&["rollout", "status", "deployment/web", "--timeout", "120s"])
        .await;
    assert!(out.ok, "rollout: {}{}", out.stdout, out.stderr);
}

async fn web_pods(up: &Up) -> Vec<Pod> {
    up.client
        .pods("default")
        .list(&ListParams {
            label_selector: "app=web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .collect()
}

async fn cluster_ip(up: &Up, service: &str) -> SocketAddr {
    let svc = up.client.services("default").get(service).await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.parse().unwrap();
    SocketAddr::new(ip, 8080)
}

async fn ready_endpoint_ips(up: &Up) -> HashSet<String> {
    let eps: Option<Endpoints> = up.client.endpoints("default").get_opt("web").await.unwrap();
    eps.map(|e| {
        e.subsets
            .iter()
            .flat_map(|s| s.addresses.iter().map(|a| a.ip.clone()))
            .collect()
    })
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_is_served_through_its_cluster_ip_by_every_pod() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]).await;
    let apply = up.skiff(&["apply", "-f", &example()]).await;
    assert!(apply.ok, "{}", apply.stderr);
    rolled_out(&up).await;
    let addr = cluster_ip(&up, "web").await;
    let names: HashSet<String> = web_pods(&up)
        .await
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(names.len(), 3);
    eventually(
        "three ready endpoints",
        Duration::from_secs(60),
        async || (ready_endpoint_ips(&up).await.len() == 3).then_some(()),
    )
    .await;
    eventually(
        "the service to answer",
        Duration::from_secs(30),
        async || get(addr, None).await.ok(),
    )
    .await;

    // 100 connections reach all three pods about evenly.
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..100 {
        *counts.entry(get(addr, None).await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        counts.keys().cloned().collect::<HashSet<_>>(),
        names,
        "{counts:?}"
    );
    assert!(
        counts.values().all(|c| (25..=42).contains(c)),
        "about evenly: {counts:?}"
    );

    // One pod's process dies: its endpoint goes when it is not ready, no
    // connection fails meanwhile, and the kubelet restarts it.
    let victim = web_pods(&up).await.into_iter().next().unwrap();
    let victim_ip = victim.status.as_ref().unwrap().pod_ip.clone();
    let pids = up.pod_processes(&victim.meta().uid);
    assert_eq!(pids.len(), 1, "one process per pod");
    std::process::Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    // `kill` returns once the signal is queued; a connection made before the
    // process has exited can still be accepted by its listener and then reset
    // — a race no proxy can hide. Count from the moment it is gone.
    eventually(
        "the killed process to exit",
        Duration::from_secs(10),
        async || (!up.pod_processes(&victim.meta().uid).contains(&pids[0])).then_some(()),
    )
    .await;
    let mut failures = 0;
    let mut served = 0;
    eventually(
        "the dead pod's endpoint to go",
        Duration::from_secs(60),
        async || {
            match get(addr, None).await {
                Ok(_) => served += 1,
                Err(_) => failures += 1,
            }
            (!ready_endpoint_ips(&up).await.contains(&victim_ip)).then_some(())
        },
    )
    .await;
    for _ in 0..30 {
        let pod = get(addr, None).await.expect("connections keep working");
        assert_ne!(pod, victim.name(), "no connection goes to the dead pod");
    }
    assert_eq!(
        failures,
        0,
        "{failures} of {} connections failed while the pod died",
        failures + served
    );
    let back = eventually(
        "the pod to be restarted and ready",
        Duration::from_secs(60),
        async || {
            let p = up.client.pods("default").get(victim.name()).await.ok()?;
            let restarted = p.status.as_ref()?.container_statuses.first()?.restart_count >= 1;
            (restarted && is_ready(&p)).then_some(p)
        },
    )
    .await;
    assert_eq!(back.meta().uid, victim.meta().uid);

    // A deleted pod is replaced by the ReplicaSet, and the proxy follows.
    let gone = web_pods(&up).await.into_iter().next().unwrap();
    up.client
        .pods("default")
        .delete(gone.name(), &DeleteParams::default())
        .await
        .unwrap();
    let replacement = eventually(
        "a replacement pod to serve",
        Duration::from_secs(90),
        async || {
            let pods = web_pods(&up).await;
            let new = pods
                .iter()
                .find(|p| !names.contains(p.name()) && is_ready(p))?
                .name()
                .to_owned();
            (pods.len() == 3 && ready_endpoint_ips(&up).await.len() == 3).then_some(new)
        },
    )
    .await;
    eventually(
        "connections to reach the replacement",
        Duration::from_secs(30),
        async || {
            for _ in 0..6 {
                if get(addr, None).await.ok()? == replacement {
                    return Some(());
                }
            }
            None
        },
    )
    .await;

    // ClientIP affinity holds a client on one pod.
    let sticky = r#"
apiVersion: v1
kind: Service
metadata: {name: web-sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 8080, targetPort: http}]
"#;
    let file = dir.path().join("sticky.yaml");
    std::fs::write(&file, sticky).unwrap();
    let out = up
        .skiff(&["apply", "-f", &file.display().to_string()])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let sticky_addr = cluster_ip(&up, "web-sticky").await;
    let first = eventually("the sticky service", Duration::from_secs(30), async || {
        get(sticky_addr, Some([127, 0, 0, 1])).await.ok()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(sticky_addr, Some([127, 0, 0, 1])).await.unwrap(), first);
    }

    // Deleting the Service takes its listener away.
    let out = up.skiff(&["delete", "service", "web"]).await;
    assert!(out.ok, "{}", out.stderr);
    eventually(
        "the listener to go",
        Duration::from_secs(30),
        async || match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;
    assert!(up.stop().await, "skiff up stops cleanly");
}

/// Every object's uid, by kind and name.
async fn everything(up: &Up) -> BTreeMap<String, String> {
    let out = up.skiff(&["get", "deployments,replicasets,pods,services,endpoints,serviceaccounts,secrets,namespaces,nodes", "-A", "-o", "json"],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            (
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap(),
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap()
                ),
                m["uid"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_finds_every_object_and_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &[]).await;
    let apply = up.skiff(&["apply", "-f", &example()]).await;
    assert!(apply.ok, "{}", apply.stderr);
    rolled_out(&up).await;
    let before = everything(&up).await;
    let ip = cluster_ip(&up, "web").await;
    assert!(
        before
            .keys()
            .any(|k| k.starts_with("Deployment/default/web"))
    );
    assert!(up.stop().await, "skiff up stops cleanly");

    let up = Up::start(dir.path(), &[]).await;
    assert_eq!(
        everything(&up).await,
        before,
        "the same objects, with the same uids"
    );
    assert_eq!(cluster_ip(&up, "web").await, ip, "the same cluster IP");
    rolled_out(&up).await;
    eventually(
        "the service to answer again",
        Duration::from_secs(60),
        async || {
            (web_pods(&up).await.iter().all(is_ready) && get(ip, None).await.is_ok()).then_some(())
        },
    )
    .await;
    assert!(up.stop().await);
}
