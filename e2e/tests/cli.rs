//! The `skiff` command line against a real API server process: a
//! Kubernetes-style manifest applies, reads back with `-o yaml`, re-applies
//! as a no-op, updates by 3-way merge, and bad input fails with a message
//! naming the document and field and a non-zero exit code.

use serde_json::Value;
use skiff_e2e::{SkiffProcess, is_subset, skiff};

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: skiff-test/httpd
        command: ["httpd", "-f", "-p", "8080"]
        ports: [{containerPort: 8080, name: http}]
        resources:
          requests: {cpu: 100m, memory: 32Mi}
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

/// An insecure API server on embedded storage under `dir`.
async fn insecure_server(dir: &std::path::Path) -> SkiffProcess {
    let data = dir.join("data");
    SkiffProcess::start_listening(&[
        "apiserver",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await
}

fn docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_applies_reads_back_and_reapplies_as_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_server(dir.path()).await;
    let addr = server.addr.as_str();
    let file = dir.path().join("shop.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let file = file.to_str().unwrap();

    let out = skiff(addr, &["apply", "-f", file]).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.stdout,
        "namespace/shop created\ndeployment.apps/web created\nservice/web created\n"
    );

    let read = |kind: &'static str, name: &'static str| async move {
        let out = skiff(addr, &["get", kind, name, "-n", "shop", "-o", "yaml"]).await;
        assert!(out.ok, "{out:?}");
        out.stdout
    };
    let first = [
        read("namespace", "shop").await,
        read("deployment", "web").await,
        read("service", "web").await,
    ];
    for (written, read) in docs(MANIFEST).iter().zip(&first) {
        let read: Value = docs(read).remove(0);
        assert!(
            is_subset(written, &read),
            "read back differs:\nwritten {written:#}\nread {read:#}"
        );
        assert!(
            read["metadata"]["uid"].is_string() && read["metadata"]["resourceVersion"].is_string()
        );
    }

    let again = skiff(addr, &["apply", "-f", file]).await;
    assert!(again.ok, "{again:?}");
    assert_eq!(
        again.stdout,
        "namespace/shop unchanged\ndeployment.apps/web unchanged\nservice/web unchanged\n"
    );
    let second = [
        read("namespace", "shop").await,
        read("deployment", "web").await,
        read("service", "web").await,
    ];
    assert_eq!(
        first, second,
        "a no-op apply changes nothing, not even resource versions"
    );

    // A changed manifest: more replicas, one label dropped.
    let changed = MANIFEST
        .replace("replicas: 3", "replicas: 5")
        .replace("{app: web, tier: front}", "{app: web}");
    std::fs::write(file, changed).unwrap();
    let out = skiff(addr, &["apply", "-f", file]).await;
    assert!(
        out.stdout.contains("deployment.apps/web configured"),
        "{out:?}"
    );
    let d: Value = docs(&read("deployment", "web").await).remove(0);
    assert_eq!(d["spec"]["replicas"], 5);
    assert!(
        d["metadata"]["labels"].get("tier").is_none(),
        "a label removed from the manifest goes"
    );
    assert_eq!(d["metadata"]["generation"], 2);

    let table = skiff(addr, &["get", "deploy", "-n", "shop"]).await;
    assert!(
        table.ok && table.stdout.starts_with("NAME   READY   UP-TO-DATE"),
        "{table:?}"
    );
    let names = skiff(addr, &["get", "all-namespaces-are-not-a-kind"]).await;
    assert!(
        !names.ok && names.stderr.contains("api-resources"),
        "{names:?}"
    );

    let out = skiff(addr, &["delete", "-f", file]).await;
    assert!(out.ok, "{out:?}");
    let gone = skiff(addr, &["get", "service", "web", "-n", "shop"]).await;
    assert!(!gone.ok && gone.stderr.contains("not found"), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_name_the_document_and_field_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_server(dir.path()).await;
    let addr = server.addr.as_str();
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec:\n  containers: [{name: c, image: x}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    imagee: x\n",
            "document 2 (v1 Pod p): spec.containers[0].imagee: unknown field",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x}], restartPolicy: Sometimes}\n",
            "spec.restartPolicy",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n",
            "not valid YAML",
        ),
        (
            "apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n",
            "apiVersion: Pod is served as v1",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let out = skiff(addr, &["apply", "-f", file.to_str().unwrap()]).await;
        assert!(!out.ok, "case {i} must fail: {out:?}");
        assert!(
            out.stderr.contains(expected),
            "case {i}: {:?} should mention {expected:?}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("bad{i}.yaml")),
            "case {i} names the file: {}",
            out.stderr
        );
    }
    // Nothing of a file with a bad document was applied.
    let pods = skiff(addr, &["get", "pods"]).await;
    assert!(
        pods.ok && pods.stderr.contains("No resources found"),
        "{pods:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_takes_several_servers_and_uses_one_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_server(dir.path()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let both = format!("{dead_addr},{}", server.addr);
    for _ in 0..5 {
        let out = skiff(&both, &["get", "namespaces"]).await;
        assert!(out.ok, "{out:?}");
        assert!(out.stdout.contains("default"), "{out:?}");
    }
    let none = skiff(&dead_addr, &["get", "namespaces"]).await;
    assert!(!none.ok);
    assert!(
        none.stderr.contains("cannot connect to the API server"),
        "{none:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_manifest_applies_and_lists_with_its_data_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_server(dir.path()).await;
    let addr = server.addr.as_str();
    // As the Kubernetes documentation writes it.
    let file = dir.path().join("cm.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: game-demo\n  namespace: kube-system\ndata:\n  player_initial_lives: \"3\"\n  ui_properties_file_name: \"user-interface.properties\"\n  game.properties: |\n    enemy.types=aliens,monsters\n    player.maximum-lives=5\nbinaryData:\n  logo: iVBORw0K\nimmutable: true\n",
    )
    .unwrap();
    let out = skiff(addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "configmap/game-demo created");
    let out = skiff(addr, &["get", "cm", "-n", "kube-system"]).await;
    assert!(out.ok, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("DATA") && lines[0].contains("AGE"),
        "{out:?}"
    );
    assert!(
        lines[1].starts_with("game-demo") && lines[1].split_whitespace().nth(1) == Some("4"),
        "{out:?}"
    );
    let out = skiff(
        addr,
        &[
            "get",
            "configmap",
            "game-demo",
            "-n",
            "kube-system",
            "-o",
            "yaml",
        ],
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout.contains("enemy.types=aliens,monsters"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("logo: iVBORw0K"), "{}", out.stdout);
    // A change to an immutable ConfigMap is refused, naming the field.
    let changed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"3\"", "\"4\"");
    std::fs::write(&file, changed).unwrap();
    let out = skiff(addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(!out.ok, "{out:?}");
    assert!(out.stderr.contains("data"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_makes_namespaces_config_maps_and_secrets_from_flags() {
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_server(dir.path()).await;
    let addr = server.addr.as_str();
    let out = skiff(addr, &["create", "namespace", "team-a"]).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "namespace/team-a created");
    let props = dir.path().join("game.properties");
    std::fs::write(&props, "lives=3\n").unwrap();
    let logo = dir.path().join("logo.bin");
    std::fs::write(&logo, [0xff, 0x00, 0xfe]).unwrap();
    let from_file = format!("--from-file={}", props.display());
    let from_bin = format!("--from-file=logo={}", logo.display());
    let out = skiff(
        addr,
        &[
            "create",
            "configmap",
            "game",
            "-n",
            "team-a",
            "--from-literal",
            "mode=hard",
            &from_file,
            &from_bin,
        ],
    )
    .await;
    assert!(out.ok, "{out:?}");
    let out = skiff(addr, &["get", "cm", "game", "-n", "team-a", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["data"]["mode"], "hard");
    assert_eq!(v["data"]["game.properties"], "lives=3\n");
    assert_eq!(v["binaryData"]["logo"], "/wD+");
    let out = skiff(
        addr,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "-n",
            "team-a",
            "--from-literal",
            "password=s3cret",
        ],
    )
    .await;
    assert!(out.ok, "{out:?}");
    let out = skiff(addr, &["get", "secret", "db", "-n", "team-a", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["data"]["password"].as_str()),
        (Some("Opaque"), Some("czNjcmV0"))
    );
    // Bad flags say what to write instead.
    let out = skiff(
        addr,
        &["create", "configmap", "x", "--from-literal", "novalue"],
    )
    .await;
    assert!(!out.ok && out.stderr.contains("KEY=VALUE"), "{out:?}");
    let out = skiff(
        addr,
        &["create", "configmap", "x", "--from-literal", "a/b=1"],
    )
    .await;
    assert!(!out.ok && out.stderr.contains("data[a/b]"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_commands_print_kubectls_columns_empty_lists_and_jsonpath() {
    let dir = tempfile::tempdir().unwrap();
    let server = insecure_server(dir.path()).await;
    let addr = server.addr.as_str();
    // An empty result is an empty List for scripts, not a message.
    let out = skiff(addr, &["get", "jobs", "-o", "json"]).await;
    assert!(out.ok, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"], serde_json::json!([]));
    let out = skiff(addr, &["get", "jobs", "-o", "yaml"]).await;
    assert!(out.stdout.contains("kind: List"), "{out:?}");

    let file = dir.path().join("cron.yaml");
    std::fs::write(
        &file,
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: hello\nspec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    metadata:\n      labels: {team: ops}\n    spec:\n      template:\n        spec:\n          containers:\n          - name: hello\n            image: busybox:1.28\n            command: [/bin/sh, -c, date]\n          restartPolicy: OnFailure\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests: {storage: 1Gi}\n",
    )
    .unwrap();
    let out = skiff(addr, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.ok, "{out:?}");

    // create job --from=cronjob/NAME: the template, owned by the cron job.
    let out = skiff(
        addr,
        &["create", "job", "hello-now", "--from=cronjob/hello"],
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "job.batch/hello-now created");
    let out = skiff(addr, &["get", "job", "hello-now", "-o", "json"]).await;
    let job: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(job["metadata"]["labels"]["team"], "ops");
    assert_eq!(
        job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let out = skiff(addr, &["create", "job", "x", "--from=deployment/web"]).await;
    assert!(!out.ok && out.stderr.contains("cronjob/NAME"), "{out:?}");

    // Columns as kubectl's.
    let out = skiff(addr, &["get", "jobs"]).await;
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{out:?}"
    );
    assert!(
        out.stdout.lines().nth(1).unwrap().contains("0/1"),
        "{out:?}"
    );
    let out = skiff(addr, &["get", "cronjobs"]).await;
    assert!(
        out.stdout.starts_with("NAME")
            && out.stdout.contains("SCHEDULE")
            && out.stdout.contains("* * * * *"),
        "{out:?}"
    );
    let out = skiff(addr, &["get", "pvc"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].contains("STATUS")
            && lines[0].contains("VOLUME")
            && lines[0].contains("CAPACITY")
            && lines[0].contains("ACCESS MODES")
            && lines[0].contains("STORAGECLASS"),
        "{out:?}"
    );
    assert!(
        lines[1].contains("Pending") && lines[1].contains("local-path"),
        "{out:?}"
    );
    let out = skiff(addr, &["get", "storageclass"]).await;
    assert!(out.stdout.contains("local-path (default)"), "{out:?}");

    // jsonpath.
    let out = skiff(
        addr,
        &["get", "jobs", "-o", "jsonpath={.items[*].metadata.name}"],
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout, "hello-now");
    let out = skiff(
        addr,
        &[
            "get",
            "pvc",
            "data",
            "-o",
            "jsonpath={.spec.storageClassName}/{.status.phase}",
        ],
    )
    .await;
    assert_eq!(out.stdout, "local-path/Pending", "{out:?}");
    let out = skiff(
        addr,
        &[
            "get",
            "namespaces",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ],
    )
    .await;
    let names: Vec<&str> = out.stdout.lines().collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&ns), "{out:?}");
    }
    let out = skiff(addr, &["get", "jobs", "-o", "jsonpath={.items[*"]).await;
    assert!(!out.ok && out.stderr.contains("unclosed"), "{out:?}");
}
