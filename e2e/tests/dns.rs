//! Cluster DNS from inside pods: a real API server, scheduler, controller
//! manager, proxy and DNS server, and a `skiff kubelet` running pods as
//! processes in their own mount namespaces (root), whose resolv.conf points
//! at the kube-dns Service. From a pod, busybox's nslookup and wget reach a
//! Service by its short and full names, a headless Service resolves to its
//! ready pods only, a stateful pod's own name resolves, an unknown name is
//! NXDOMAIN, and a deleted Service stops resolving within seconds.

use std::time::Duration;

use futures::StreamExt;
use skiff::api::core::v1::{
    Container, ExecAction, HttpGetAction, Pod, PodSpec, Probe, Service, ServicePort, ServiceSpec,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use skiff::params::DeleteParams;
use skiff::testing::eventually;
use skiff_e2e::cluster::{Cluster, Kubelet, TEST_IMAGE, is_ready, pod_ip, unique};
use skiff_e2e::pods::is_root;

fn pod(name: &str, node: &str, labels: &[(&str, &str)], script: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: TEST_IMAGE.into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }],
            node_selector: [("kubernetes.io/hostname".to_owned(), node.to_owned())].into(),
            termination_grace_period_seconds: Some(1),
            ..Default::default()
        }),
        status: None,
    }
}

/// A web server on the pod's IP saying its name, ready once it serves.
fn web(name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    let mut p = pod(
        name,
        node,
        labels,
        "mkdir -p www; echo \"hello from $POD_NAME\" > www/index.html; \
         exec busybox httpd -f -p $POD_IP:8080 -h www",
    );
    p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe {
        http_get: Some(HttpGetAction {
            path: "/index.html".into(),
            port: "8080".into(),
            ..Default::default()
        }),
        period_seconds: 1,
        ..Default::default()
    });
    p
}

fn service(name: &str, app: &str, headless: bool) -> Service {
    Service {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            selector: [("app".to_owned(), app.to_owned())].into(),
            cluster_ip: if headless {
                "None".into()
            } else {
                String::new()
            },
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8080,
                target_port: "8080".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `command` in pod `name`; its exit code and output (stdout and stderr).
async fn exec(client: &Client, name: &str, command: &[&str]) -> (i32, String) {
    let cmd: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let mut stream = client
        .pods("default")
        .exec(name, "", &cmd)
        .await
        .expect("exec starts");
    let (mut code, mut out) = (-1, String::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("exec output");
        out.push_str(&String::from_utf8_lossy(&chunk.stdout));
        out.push_str(&String::from_utf8_lossy(&chunk.stderr));
        if let Some(c) = chunk.exit_code {
            code = c;
        }
    }
    (code, out)
}

/// busybox's nslookup of `name` from pod `pod`: its exit code and output.
async fn nslookup(client: &Client, pod: &str, name: &str) -> (i32, String) {
    exec(client, pod, &["busybox", "nslookup", name]).await
}

/// busybox's wget of `url` from pod `pod`: its exit code and the page.
async fn wget(client: &Client, pod: &str, url: &str) -> (i32, String) {
    exec(client, pod, &["busybox", "wget", "-q", "-O", "-", url]).await
}

/// The addresses busybox's nslookup printed for the name asked (not the server's).
fn addresses(nslookup: &str) -> Vec<String> {
    let mut out: Vec<String> = nslookup
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_resolve_services_headless_endpoints_and_stateful_names_by_cluster_dns() {
    if !is_root() {
        eprintln!("skipped: the process runtime gives pods their resolv.conf only as root");
        return;
    }
    let cluster = Cluster::start_with_dns().await;
    let node = unique("node");
    let _kubelet = Kubelet::start(&cluster, &node, "process", &[]).await;
    cluster.node_ready(&node).await;
    let client = &cluster.client;
    let pods = client.pods("default");
    let services = client.services("default");

    // web: a Service over one server; db: a headless Service over a ready
    // pod and one that never gets ready, both with stateful-style names.
    pods.create(&web("web-1", &node, &[("app", "web")]))
        .await
        .unwrap();
    services
        .create(&service("web", "web", false))
        .await
        .unwrap();
    let mut db0 = web("db-0", &node, &[("app", "db")]);
    let mut db1 = web("db-1", &node, &[("app", "db")]);
    for (p, host) in [(&mut db0, "db-0"), (&mut db1, "db-1")] {
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = host.into();
        spec.subdomain = "db".into();
    }
    db1.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: vec!["false".into()],
        }),
        period_seconds: 1,
        ..Default::default()
    });
    pods.create(&db0).await.unwrap();
    pods.create(&db1).await.unwrap();
    services.create(&service("db", "db", true)).await.unwrap();
    pods.create(&pod("client", &node, &[], "exec sleep 3600"))
        .await
        .unwrap();
    let web_ip = pod_ip(&cluster.pod_until("web-1", "ready", is_ready).await);
    let db0_ip = pod_ip(&cluster.pod_until("db-0", "ready", is_ready).await);
    cluster
        .pod_until("db-1", "running", |p| {
            p.status.as_ref().is_some_and(|s| !s.pod_ip.is_empty())
        })
        .await;
    cluster.pod_until("client", "ready", is_ready).await;
    let cluster_ip = services.get("web").await.unwrap().spec.unwrap().cluster_ip;

    // The pod's resolver points at the kube-dns Service with Kubernetes' search path.
    let (_, resolv) = exec(client, "client", &["cat", "/etc/resolv.conf"]).await;
    let dns_ip = client
        .services("kube-system")
        .get("kube-dns")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip;
    assert!(
        resolv.contains(&format!("nameserver {dns_ip}"))
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("options ndots:5"),
        "{resolv}"
    );

    // A Service by its short name and its full name; wget reaches it.
    // (busybox asks every search domain at once and prints each answer:
    // the others are NXDOMAIN, so its exit code is not the test.)
    let out = eventually(
        "web to resolve from the pod",
        Duration::from_secs(20),
        async || {
            let (_, out) = nslookup(client, "client", "web").await;
            addresses(&out).contains(&cluster_ip).then_some(out)
        },
    )
    .await;
    assert_eq!(addresses(&out), std::slice::from_ref(&cluster_ip), "{out}");
    let (code, out) = nslookup(client, "client", "web.default.svc.cluster.local").await;
    assert_eq!(
        (code, addresses(&out)),
        (0, vec![cluster_ip.clone()]),
        "{out}"
    );
    let (code, page) = wget(client, "client", "http://web:8080/index.html").await;
    assert_eq!((code, page.trim()), (0, "hello from web-1"), "{page}");
    let (code, page) = wget(client, "client", "http://web.default:8080/index.html").await;
    assert_eq!((code, page.trim()), (0, "hello from web-1"), "{page}");
    // A pod by its dashed address.
    let name = format!("{}.default.pod.cluster.local", web_ip.replace('.', "-"));
    let (code, out) = nslookup(client, "client", &name).await;
    assert_eq!((code, addresses(&out)), (0, vec![web_ip.clone()]), "{out}");

    // The headless Service: its ready pod only; a stateful pod by its name.
    let (code, out) = nslookup(client, "client", "db.default.svc.cluster.local").await;
    assert_eq!((code, addresses(&out)), (0, vec![db0_ip.clone()]), "{out}");
    let out = eventually("db-0.db to resolve", Duration::from_secs(10), async || {
        let (code, out) = nslookup(client, "client", "db-0.db.default.svc.cluster.local").await;
        (code == 0).then_some(out)
    })
    .await;
    assert_eq!(addresses(&out), std::slice::from_ref(&db0_ip), "{out}");
    let (_, page) = wget(client, "client", "http://db-0.db:8080/index.html").await;
    assert_eq!(page.trim(), "hello from db-0");

    // What does not exist.
    let (code, out) = nslookup(client, "client", "nope.default.svc.cluster.local").await;
    assert!(code != 0 && out.contains("NXDOMAIN"), "{code} {out}");
    let (code, out) = nslookup(client, "client", "db-1.db.default.svc.cluster.local").await;
    assert!(
        code != 0 && out.contains("NXDOMAIN"),
        "a pod that is not ready is not published: {out}"
    );

    // A deleted Service stops resolving within a few seconds.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "web to stop resolving",
        Duration::from_secs(10),
        async || {
            let (code, out) = nslookup(client, "client", "web.default.svc.cluster.local").await;
            (code != 0 && out.contains("NXDOMAIN")).then_some(())
        },
    )
    .await;
}
