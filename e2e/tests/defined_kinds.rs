//! A kind defined at run time, used the way its users would: `skiff apply`
//! of one file holding the definition and an object of its kind, `get`
//! with the declared columns, `-o yaml`, `api-resources`, unknown fields
//! refused, and a Python client generated with protoc from
//! `skiff get resourcedefinition … -o proto` creating and watching objects.

use std::path::PathBuf;

use skiff_e2e::{SkiffProcess, skiff};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_defined_kind_applies_from_yaml_prints_its_columns_and_serves_a_generated_python_client()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = SkiffProcess::start_listening(&[
        "apiserver",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    let addr = server.addr.as_str();
    let example = repo().join("examples/widgets/widgets.yaml");
    let example = example.to_str().unwrap();

    // One file: the definition, then an object of the kind it defines.
    let applied = skiff(addr, &["apply", "-f", example]).await;
    assert!(applied.ok, "{applied:?}");
    assert!(
        applied.stdout.contains(
            "resourcedefinition.apiextensions.skiff.dev/widgets.acme.example.com created"
        ) && applied
            .stdout
            .contains("widget.acme.example.com/w1 created"),
        "{applied:?}"
    );
    let again = skiff(addr, &["apply", "-f", example]).await;
    assert!(
        again.ok
            && again
                .stdout
                .contains("widget.acme.example.com/w1 unchanged"),
        "{again:?}"
    );

    let table = skiff(addr, &["get", "widgets"]).await;
    assert!(table.ok, "{table:?}");
    let header = table.stdout.lines().next().unwrap_or_default().to_owned();
    for h in ["NAME", "COLOR", "PHASE", "AGE"] {
        assert!(header.contains(h), "{header}");
    }
    assert!(
        table.stdout.contains("w1") && table.stdout.contains("blue"),
        "{table:?}"
    );
    let yaml = skiff(addr, &["get", "wd", "w1", "-o", "yaml"]).await;
    assert!(
        yaml.ok
            && yaml.stdout.contains("apiVersion: acme.example.com/v1")
            && yaml.stdout.contains("kind: Widget")
            && yaml.stdout.contains("color: blue"),
        "{yaml:?}"
    );
    let resources = skiff(addr, &["api-resources"]).await;
    assert!(
        resources.stdout.lines().any(|l| l.contains("widgets")
            && l.contains("wd")
            && l.contains("acme.example.com/v1")),
        "{resources:?}"
    );

    // Unknown fields are refused as for the API's own kinds, naming the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: acme.example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 3, colour: blue}\n",
    )
    .unwrap();
    let refused = skiff(addr, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(
        !refused.ok && refused.stderr.contains("colour"),
        "{refused:?}"
    );

    // A Python client generated from what the server says of the kind.
    let proto = skiff(
        addr,
        &[
            "get",
            "resourcedefinition",
            "widgets.acme.example.com",
            "-o",
            "proto",
        ],
    )
    .await;
    assert!(
        proto.ok && proto.stdout.contains("service WidgetService"),
        "{proto:?}"
    );
    let gen_dir = dir.path().join("gen");
    std::fs::create_dir_all(gen_dir.join("acme/v1")).unwrap();
    std::fs::write(gen_dir.join("acme/v1/widget.proto"), &proto.stdout).unwrap();
    let protoc = tokio::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&gen_dir)
        .arg("-I")
        .arg(repo().join("proto"))
        .arg("--python_out")
        .arg(&gen_dir)
        .arg("--grpc_python_out")
        .arg(&gen_dir)
        .args(["acme/v1/widget.proto", "skiff/meta/v1/meta.proto"])
        .output()
        .await
        .expect("run grpc_tools.protoc: scripts/install-deps.sh test installs grpcio-tools");
    assert!(
        protoc.status.success(),
        "{}",
        String::from_utf8_lossy(&protoc.stderr)
    );
    let client = tokio::process::Command::new("python3")
        .arg(repo().join("examples/widgets/client.py"))
        .arg(addr)
        .env("PYTHONPATH", &gen_dir)
        .output()
        .await
        .expect("run the Python client");
    let out = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(out.contains("created from-python"), "{out}");
    assert!(out.contains("listed from-python\n"), "{out}");
    assert!(out.contains("event EVENT_TYPE_ADDED w1 blue"), "{out}");
    assert!(
        out.contains("event EVENT_TYPE_ADDED from-python red"),
        "{out}"
    );

    // The command line sees what Python made, by the declared field.
    let red = skiff(
        addr,
        &["get", "widgets", "--field-selector", "spec.color=red"],
    )
    .await;
    assert!(
        red.ok && red.stdout.contains("from-python") && !red.stdout.contains("w1"),
        "{red:?}"
    );
    let deleted = skiff(addr, &["delete", "widget", "w1"]).await;
    assert!(deleted.ok, "{deleted:?}");
}
