//! A kind defined at run time, used the way its users would: `skiff apply`
//! of one file holding the definition and an object of its kind, `get`
//! with the declared columns, `-o yaml`, `api-resources`, unknown fields
//! refused, and a Python client generated with protoc from
//! `skiff get resourcedefinition … -o proto` creating and watching objects;
//! and the Rust SDK's typed `Api<Widget>` (a prost struct made a kind with
//! `skiff::defined_resource!`) driving the example controller, which
//! reconciles Widgets into Deployments they own.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::api::apps::v1::Deployment;
use skiff::client::{Api, Error};
use skiff::params::{DeleteParams, ListParams};
use skiff::runtime::{Event, WatcherConfig, watcher};
use skiff_e2e::cluster::{Cluster, Kubelet, TEST_IMAGE, eventually, unique};
use skiff_e2e::{SkiffProcess, skiff};
use widget_controller::{Widget, WidgetSpec, WidgetStatus};

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
    assert!(out.contains("got from-python 2\n"), "{out}");
    assert!(out.contains("updated from-python 4\n"), "{out}");
    assert!(
        out.contains("stale update refused StatusCode.ABORTED"),
        "{out}"
    );
    assert!(out.contains("status Ready\n"), "{out}");
    assert!(out.contains("deleted py-temp\n"), "{out}");
    // Watched from the first create: exactly what came after, in order.
    let since: Vec<&str> = out.lines().filter(|l| l.starts_with("since ")).collect();
    assert_eq!(
        since,
        [
            "since EVENT_TYPE_MODIFIED from-python 4",
            "since EVENT_TYPE_MODIFIED from-python 4",
            "since EVENT_TYPE_ADDED py-temp 1",
            "since EVENT_TYPE_DELETED py-temp 1",
        ],
        "{out}"
    );
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

/// The example controller, written with the SDK over the typed
/// `Api<Widget>`: a Widget gets a Deployment it owns with `spec.size`
/// replicas, follows resizes, shows `Ready` once the pods run, and its
/// Deployment goes with it (the garbage collector follows the owner
/// reference to a defined kind, also in the foreground). The typed API itself: get, list by the
/// declared field, a stale update refused, status only through its
/// subresource, and a watcher of the kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_controller_reconciles_widgets_into_deployments_they_own() {
    let cluster = Cluster::start().await;
    let node = unique("widgets");
    let _kubelet = Kubelet::start(&cluster, &node, "process", &[]).await;
    cluster.node_ready(&node).await;
    let example = repo().join("examples/widgets/widgets.yaml");
    let applied = skiff(&cluster.server, &["apply", "-f", example.to_str().unwrap()]).await;
    assert!(applied.ok, "{applied:?}");

    let widgets: Api<Widget> = cluster.client.api("default");
    let w1 = widgets.get("w1").await.unwrap();
    assert_eq!(
        w1.spec.as_ref().map(|s| (s.size, s.color.as_str())),
        Some((3, "blue"))
    );
    let mut events = std::pin::pin!(watcher(widgets.clone(), WatcherConfig::default()));
    let small = Widget {
        metadata: Some(skiff::api::meta::v1::ObjectMeta {
            name: "small".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(WidgetSpec {
            size: 1,
            color: "red".into(),
        }),
        // Written only through the status subresource.
        status: Some(WidgetStatus {
            phase: "Bogus".into(),
        }),
    };
    let small = widgets.create(&small).await.unwrap();
    assert_eq!(small.status, None, "create ignores the status");
    let red = widgets
        .list(&ListParams {
            field_selector: "spec.color=red".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<_> = red.items.iter().map(|w| w.name().to_owned()).collect();
    assert_eq!(names, ["small"]);
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            if let Ok(Event::InitApply(w) | Event::Apply(w)) = event
                && w.name() == "small"
            {
                return;
            }
        }
    })
    .await
    .expect("the watcher sees the new widget");
    let mut stale = w1.clone();
    stale.spec.as_mut().unwrap().size = 9;
    stale.meta_mut().resource_version = "1".into();
    assert!(
        matches!(widgets.update(&stale).await, Err(Error::Conflict(_))),
        "a stale update is refused"
    );

    let controller = tokio::spawn(widget_controller::run(
        cluster.client.clone(),
        widget_controller::Config {
            image: TEST_IMAGE.into(),
            ..Default::default()
        },
        std::future::pending(),
    ));
    let deployments: Api<Deployment> = cluster.client.deployments("default");
    let owned = eventually(
        "widget-w1 to be created",
        Duration::from_secs(60),
        async || deployments.get_opt("widget-w1").await.ok().flatten(),
    )
    .await;
    assert_eq!(owned.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let owner = &owned.meta().owner_references;
    assert!(
        owner.len() == 1
            && owner[0].kind == "Widget"
            && owner[0].api_version == "acme.example.com/v1"
            && owner[0].uid == w1.meta().uid
            && owner[0].controller == Some(true),
        "{owner:?}"
    );

    // A resize reaches the Deployment; the pods run and the Widget says so.
    // (The controller writes the status meanwhile: retry on a conflict.)
    eventually("w1 to be resized", Duration::from_secs(30), async || {
        let mut resized = widgets.get("w1").await.ok()?;
        resized.spec.as_mut()?.size = 2;
        widgets.update(&resized).await.ok()
    })
    .await;
    eventually(
        "widget-w1 to have 2 replicas",
        Duration::from_secs(60),
        async || {
            let d = deployments.get("widget-w1").await.ok()?;
            (d.spec.as_ref()?.replicas == Some(2)).then_some(())
        },
    )
    .await;
    for name in ["w1", "small"] {
        eventually(
            &format!("{name} to be Ready"),
            Duration::from_secs(120),
            async || {
                let w = widgets.get(name).await.ok()?;
                (w.status.as_ref()?.phase == "Ready").then_some(())
            },
        )
        .await;
    }

    // Deleting a Widget deletes what it owns; the other Widget keeps its own.
    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "widget-w1 to be collected",
        Duration::from_secs(60),
        async || matches!(deployments.get_opt("widget-w1").await, Ok(None)).then_some(()),
    )
    .await;
    assert!(deployments.get_opt("widget-small").await.unwrap().is_some());
    // In the foreground: the Widget stays (terminating) until what it owns is gone.
    widgets
        .delete(
            "small",
            &DeleteParams {
                propagation_policy: "Foreground".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually(
        "small and widget-small to be gone",
        Duration::from_secs(60),
        async || {
            let widget = widgets.get_opt("small").await.ok()?;
            let deployment = deployments.get_opt("widget-small").await.ok()?;
            if let Some(w) = &widget {
                assert!(
                    w.meta().deletion_timestamp.is_some(),
                    "the Widget is terminating meanwhile"
                );
            }
            assert!(
                deployment.is_none() || widget.is_some(),
                "the Widget went before what it owns"
            );
            (widget.is_none() && deployment.is_none()).then_some(())
        },
    )
    .await;
    controller.abort();
}
