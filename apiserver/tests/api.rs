//! The API's semantics through a real gRPC server in this process, on both
//! storage backends: every test runs once on embedded storage and once on a
//! real etcd.

use std::collections::BTreeMap;

use skiff::Resource;
use skiff::api::apps::v1::{
    ReplicaSet, ReplicaSetSpec, ScaleReplicaSetRequest,
    replica_set_service_client::ReplicaSetServiceClient,
};
use skiff::api::core::v1::{
    BindPodRequest, BindPodsRequest, ConfigMap, Container, Namespace, Node, Pod, PodSpec,
    PodStatus, PodTemplateSpec, pod_service_client::PodServiceClient,
};
use skiff::api::meta::v1::{EventType, LabelSelector, ObjectMeta, Preconditions};
use skiff::client::{ResourceClient, Transport};
use skiff::params::{DeleteParams, GetParams, ListParams, WatchParams};
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::testing::{EtcdServer, TestServer};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn meta(ns: &str, name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    })
}

fn pod(ns: &str, name: &str) -> Pod {
    Pod {
        metadata: meta(ns, name),
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

fn labeled(mut p: Pod, labels: &[(&str, &str)]) -> Pod {
    p.meta_mut().labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p
}

fn get(ns: &str, name: &str) -> GetParams {
    GetParams {
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn del(ns: &str, name: &str) -> DeleteParams {
    DeleteParams {
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// Runs `check` against a server on embedded storage and one on a real etcd.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let server = skiff_apiserver::testing::TestServer::embedded(dir.path()).await;
                    super::$name(&server).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (server, _etcd) = super::etcd_server().await;
                    super::$name(&server).await;
                }
            )*
        }
    };
}

async fn etcd_server() -> (TestServer, EtcdServer) {
    let etcd = EtcdServer::start().await;
    let storage = EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint), "/skiff")
        .await
        .unwrap();
    (TestServer::start(std::sync::Arc::new(storage)).await, etcd)
}

on_both_backends!(
    create_sets_server_metadata_and_get_reads_it_back,
    generate_name_gives_unique_names,
    a_long_multibyte_generate_name_is_cut_on_a_character_boundary,
    update_is_compare_and_swap_and_bumps_generation_on_spec_change,
    update_leaves_status_alone_and_update_status_leaves_spec_alone,
    bad_input_gets_its_code_and_changes_nothing,
    oversized_requests_are_resource_exhausted_and_change_nothing,
    finalizers_hold_deletion_until_removed,
    bind_pod_binds_once,
    bind_pods_binds_each_pod_once_and_reports_each_failure_alone,
    list_filters_by_label_and_field_and_pages_consistently,
    deleting_a_bound_pod_is_graceful,
    namespaces_terminate_and_refuse_new_objects,
    watch_from_a_resource_version_streams_changes,
    scale_sets_replicas,
    config_maps_validate_keys_and_immutable_ones_refuse_changes,
    workload_and_storage_kinds_default_as_kubernetes_and_refuse_bad_input_naming_the_field,
    the_kubernetes_documentation_examples_are_accepted_unchanged,
    the_system_namespaces_refuse_deletion,
    malformed_and_contradictory_requests_are_refused_naming_the_field_and_change_nothing,
);

async fn revision(s: &TestServer) -> i64 {
    s.storage.current_revision().await.unwrap()
}

async fn create_sets_server_metadata_and_get_reads_it_back(s: &TestServer) {
    let t = s.transport().await;
    let created = Pod::create_in(t.clone(), labeled(pod("", "web"), &[("app", "web")]))
        .await
        .unwrap();
    let m = created.meta();
    assert_eq!(m.namespace, "default", "an empty namespace means default");
    assert!(!m.uid.is_empty());
    assert!(m.creation_timestamp.is_some());
    assert_eq!(m.generation, 1);
    assert!(m.resource_version.parse::<i64>().unwrap() > 0);
    assert_eq!(created.status.as_ref().unwrap().phase, "Pending");
    let got = Pod::get_in(t.clone(), get("default", "web")).await.unwrap();
    assert_eq!(got, created);
    let err = Pod::create_in(t.clone(), pod("default", "web"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = Pod::get_in(t, get("default", "nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("default/nope"), "{}", err.message());
}

async fn generate_name_gives_unique_names(s: &TestServer) {
    let t = s.transport().await;
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let mut p = pod("default", "");
        p.meta_mut().generate_name = "web-".into();
        let created = Pod::create_in(t.clone(), p).await.unwrap();
        assert!(
            created.name().starts_with("web-") && created.name().len() == 9,
            "{}",
            created.name()
        );
        names.insert(created.name().to_owned());
    }
    assert_eq!(names.len(), 5);
}

/// A `generateName` of 57 ASCII letters and one two-byte letter: 59 bytes,
/// so the 58-byte cut falls inside the letter. The RBAC kinds allow such
/// names (any character but '/' and '%').
async fn a_long_multibyte_generate_name_is_cut_on_a_character_boundary(s: &TestServer) {
    use skiff::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let t = s.transport().await;
    let prefix = format!("{}é", "a".repeat(57));
    assert_eq!(prefix.len(), 59);
    let named = |ns: &str| {
        Some(ObjectMeta {
            namespace: ns.into(),
            generate_name: prefix.clone(),
            ..Default::default()
        })
    };
    let rules = vec![PolicyRule {
        verbs: vec!["get".into()],
        resources: vec!["pods".into()],
        ..Default::default()
    }];
    let check = |name: &str| {
        assert!(name.len() <= 63, "{name:?} is {} bytes", name.len());
        assert!(name.starts_with(&"a".repeat(57)), "{name:?}");
        assert_eq!(name.chars().count(), 57 + 5, "{name:?}");
    };
    let role = ClusterRole::create_in(
        t.clone(),
        ClusterRole {
            metadata: named(""),
            rules: rules.clone(),
        },
    )
    .await
    .unwrap();
    check(role.name());
    let role = Role::create_in(
        t.clone(),
        Role {
            metadata: named("default"),
            rules,
        },
    )
    .await
    .unwrap();
    check(role.name());
    let binding = RoleBinding::create_in(
        t.clone(),
        RoleBinding {
            metadata: named("default"),
            subjects: vec![Subject {
                kind: "User".into(),
                name: "alice".into(),
                ..Default::default()
            }],
            role_ref: Some(RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: role.name().to_owned(),
            }),
        },
    )
    .await
    .unwrap();
    check(binding.name());
    // Read back by the name the server chose.
    let got = RoleBinding::get_in(t, get("default", binding.name()))
        .await
        .unwrap();
    assert_eq!(got, binding);
}

async fn update_is_compare_and_swap_and_bumps_generation_on_spec_change(s: &TestServer) {
    let t = s.transport().await;
    let created = Pod::create_in(t.clone(), pod("default", "web"))
        .await
        .unwrap();

    // A label change is not a spec change.
    let mut relabeled = created.clone();
    relabeled
        .meta_mut()
        .labels
        .insert("tier".into(), "front".into());
    let relabeled = Pod::update_in(t.clone(), relabeled).await.unwrap();
    assert_eq!(relabeled.meta().generation, 1);
    assert!(relabeled.resource_version() > created.resource_version());

    // An image change is.
    let mut reimaged = relabeled.clone();
    reimaged.spec.as_mut().unwrap().containers[0].image = "busybox:2".into();
    let reimaged = Pod::update_in(t.clone(), reimaged).await.unwrap();
    assert_eq!(reimaged.meta().generation, 2);
    assert_eq!(reimaged.meta().uid, created.meta().uid);

    // The stale version fails and changes nothing.
    let before = revision(s).await;
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().containers[0].image = "busybox:3".into();
    let err = Pod::update_in(t.clone(), stale).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(revision(s).await, before);
    assert_eq!(
        Pod::get_in(t.clone(), get("default", "web")).await.unwrap(),
        reimaged
    );

    // An identical update is a no-op: same resource version.
    let same = Pod::update_in(t.clone(), reimaged.clone()).await.unwrap();
    assert_eq!(same.resource_version(), reimaged.resource_version());
    assert_eq!(revision(s).await, before);

    // No resource version: an unconditional update of the latest state.
    let mut unconditional = reimaged.clone();
    unconditional.meta_mut().resource_version.clear();
    unconditional
        .meta_mut()
        .annotations
        .insert("note".into(), "x".into());
    let updated = Pod::update_in(t.clone(), unconditional).await.unwrap();
    assert_eq!(updated.meta().annotations["note"], "x");

    // The pod spec is immutable apart from images and tolerations.
    let mut forbidden = updated.clone();
    forbidden.spec.as_mut().unwrap().containers[0].command = vec!["sh".into()];
    let err = Pod::update_in(t, forbidden).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn update_leaves_status_alone_and_update_status_leaves_spec_alone(s: &TestServer) {
    let t = s.transport().await;
    let created = Pod::create_in(t.clone(), pod("default", "web"))
        .await
        .unwrap();
    let mut with_status = created.clone();
    with_status.status = Some(PodStatus {
        phase: "Running".into(),
        pod_ip: "127.1.0.2".into(),
        ..Default::default()
    });
    with_status.spec.as_mut().unwrap().containers[0].image = "ignored".into();
    let after = Pod::update_status_in(t.clone(), with_status).await.unwrap();
    assert_eq!(after.status.as_ref().unwrap().phase, "Running");
    assert_eq!(after.spec, created.spec, "a status update ignores the spec");

    let mut spec_change = after.clone();
    spec_change.status = Some(PodStatus {
        phase: "Failed".into(),
        ..Default::default()
    });
    spec_change.spec.as_mut().unwrap().containers[0].image = "busybox:2".into();
    let after2 = Pod::update_in(t.clone(), spec_change).await.unwrap();
    assert_eq!(
        after2.status.as_ref().unwrap().phase,
        "Running",
        "an update ignores the status"
    );
    assert_eq!(
        after2.spec.as_ref().unwrap().containers[0].image,
        "busybox:2"
    );

    let mut bad = after2.clone();
    bad.status.as_mut().unwrap().phase = "Sleeping".into();
    let err = Pod::update_status_in(t, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("status.phase"));
}

async fn bad_input_gets_its_code_and_changes_nothing(s: &TestServer) {
    let t = s.transport().await;
    let existing = Pod::create_in(t.clone(), pod("default", "keep"))
        .await
        .unwrap();
    let before = revision(s).await;

    let cases: Vec<(Pod, Code, &str)> = vec![
        (
            pod("default", "Bad_Name"),
            Code::InvalidArgument,
            "metadata.name",
        ),
        (pod("default", ""), Code::InvalidArgument, "metadata.name"),
        (
            pod("default", &"a".repeat(300)),
            Code::InvalidArgument,
            "metadata.name",
        ),
        (
            labeled(pod("default", "x"), &[("bad key!", "v")]),
            Code::InvalidArgument,
            "metadata.labels",
        ),
        (
            Pod {
                spec: Some(PodSpec::default()),
                ..pod("default", "nocontainers")
            },
            Code::InvalidArgument,
            "spec.containers",
        ),
        (
            pod("no-such-namespace", "x"),
            Code::NotFound,
            "no-such-namespace",
        ),
    ];
    for (obj, code, mention) in cases {
        let err = Pod::create_in(t.clone(), obj).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(
            err.message().contains(mention),
            "{} should mention {mention}",
            err.message()
        );
        if code == Code::InvalidArgument {
            let br = err
                .get_details_bad_request()
                .expect("BadRequest names the fields");
            assert!(
                br.field_violations
                    .iter()
                    .any(|v| v.field.starts_with(mention)),
                "{br:?}"
            );
        }
    }

    for selector in ["app in (a", "=x", "a b"] {
        let err = Pod::list_in(
            t.clone(),
            ListParams {
                label_selector: selector.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("label_selector"));
    }
    for selector in ["spec.nodeName", "spec.nope=1"] {
        let err = Pod::list_in(
            t.clone(),
            ListParams {
                field_selector: selector.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{selector}");
    }
    let err = Pod::list_in(
        t.clone(),
        ListParams {
            page_token: "garbage".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = Pod::get_in(
        t.clone(),
        GetParams {
            resource_version: "abc".into(),
            ..get("default", "keep")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Stale resource versions on update and delete.
    let mut stale = existing.clone();
    stale.meta_mut().resource_version = "1".into();
    stale.meta_mut().labels.insert("x".into(), "y".into());
    assert_eq!(
        Pod::update_in(t.clone(), stale).await.unwrap_err().code(),
        Code::Aborted
    );
    let err = Pod::delete_in(
        t.clone(),
        DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: "1".into(),
                uid: String::new(),
            }),
            ..del("default", "keep")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = Pod::delete_in(
        t.clone(),
        DeleteParams {
            preconditions: Some(Preconditions {
                uid: "not-the-uid".into(),
                resource_version: String::new(),
            }),
            ..del("default", "keep")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = Pod::delete_in(
        t.clone(),
        DeleteParams {
            propagation_policy: "Sideways".into(),
            ..del("default", "keep")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    assert_eq!(
        revision(s).await,
        before,
        "no failed request wrote anything"
    );
    assert_eq!(
        Pod::get_in(t.clone(), get("default", "keep"))
            .await
            .unwrap(),
        existing
    );
    let all = Pod::list_in(t, ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 1);
}

async fn oversized_requests_are_resource_exhausted_and_change_nothing(s: &TestServer) {
    let t = s.transport().await;
    let before = revision(s).await;
    for size in [1536 * 1024 - 200, 2 * 1024 * 1024, 8 * 1024 * 1024] {
        let mut big = pod("default", "big");
        big.meta_mut()
            .annotations
            .insert("blob".into(), "x".repeat(size));
        let err = Pod::create_in(t.clone(), big).await.unwrap_err();
        // Just under the limit fails validation (annotations are capped at 256 KiB).
        let expected = if size < 1536 * 1024 {
            Code::InvalidArgument
        } else {
            Code::ResourceExhausted
        };
        assert_eq!(err.code(), expected, "size {size}: {err:?}");
        if expected == Code::ResourceExhausted {
            assert!(
                err.message().contains("too large") || err.message().contains("limit"),
                "{}",
                err.message()
            );
        }
    }
    assert_eq!(revision(s).await, before);
    // The connection is still usable.
    Pod::create_in(t, pod("default", "small")).await.unwrap();
}

async fn finalizers_hold_deletion_until_removed(s: &TestServer) {
    let t = s.transport().await;
    let mut p = pod("default", "held");
    p.meta_mut().finalizers.push("example.com/hold".into());
    Pod::create_in(t.clone(), p).await.unwrap();
    let marked = Pod::delete_in(t.clone(), del("default", "held"))
        .await
        .unwrap();
    assert!(marked.meta().deletion_timestamp.is_some());
    let still = Pod::get_in(t.clone(), get("default", "held"))
        .await
        .unwrap();
    assert!(still.meta().deletion_timestamp.is_some());
    // Deleting again changes nothing.
    let again = Pod::delete_in(t.clone(), del("default", "held"))
        .await
        .unwrap();
    assert_eq!(again.resource_version(), still.resource_version());
    let mut released = still.clone();
    released.meta_mut().finalizers.clear();
    Pod::update_in(t.clone(), released).await.unwrap();
    let err = Pod::get_in(t, get("default", "held")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the object goes with its last finalizer"
    );
}

async fn bind_pod_binds_once(s: &TestServer) {
    let t = s.transport().await;
    Pod::create_in(t.clone(), pod("default", "web"))
        .await
        .unwrap();
    let mut client = PodServiceClient::new(t.clone());
    let bound = client
        .bind_pod(BindPodRequest {
            namespace: "default".into(),
            name: "web".into(),
            node_name: "n1".into(),
            uid: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod
        .unwrap();
    assert_eq!(bound.spec.as_ref().unwrap().node_name, "n1");
    let cond = &bound.status.as_ref().unwrap().conditions;
    assert!(
        cond.iter()
            .any(|c| c.r#type == "PodScheduled" && c.status == "True")
    );
    let err = client
        .bind_pod(BindPodRequest {
            namespace: "default".into(),
            name: "web".into(),
            node_name: "n2".into(),
            uid: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("n1"));
    let err = client
        .bind_pod(BindPodRequest {
            namespace: "default".into(),
            name: "missing".into(),
            node_name: "n2".into(),
            uid: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The node name cannot be changed through an update either.
    let mut moved = Pod::get_in(t.clone(), get("default", "web")).await.unwrap();
    moved.spec.as_mut().unwrap().node_name = "n2".into();
    assert_eq!(
        Pod::update_in(t, moved).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

async fn bind_pods_binds_each_pod_once_and_reports_each_failure_alone(s: &TestServer) {
    let t = s.transport().await;
    let mut uids = BTreeMap::new();
    for name in ["a", "b", "c", "d", "sentinel"] {
        let p = Pod::create_in(t.clone(), pod("default", name))
            .await
            .unwrap();
        uids.insert(name, p.meta().uid.clone());
    }
    let mut held = pod("default", "leaving");
    held.meta_mut().finalizers.push("example.com/hold".into());
    Pod::create_in(t.clone(), held).await.unwrap();
    Pod::delete_in(t.clone(), del("default", "leaving"))
        .await
        .unwrap();
    let mut client = PodServiceClient::new(t.clone());
    let binding = |name: &str, node: &str, uid: &str| BindPodRequest {
        namespace: "default".into(),
        name: name.into(),
        node_name: node.into(),
        uid: uid.into(),
    };
    client.bind_pod(binding("b", "n0", "")).await.unwrap();
    let before = Pod::list_in(t.clone(), ListParams::default())
        .await
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;

    let results = client
        .bind_pods(BindPodsRequest {
            bindings: vec![
                binding("a", "n1", &uids["a"]),
                binding("b", "n2", ""),
                binding("missing", "n1", ""),
                binding("c", "n1", "not-its-uid"),
                binding("leaving", "n1", ""),
                binding("d", "Not_A_Node", ""),
                binding("d", "n2", ""),
                binding("d", "n3", ""),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<(String, i32)> = results
        .iter()
        .map(|r| (r.name.clone(), r.error.as_ref().map_or(0, |e| e.code)))
        .collect();
    let expected = [
        ("a", Code::Ok),
        ("b", Code::FailedPrecondition),
        ("missing", Code::NotFound),
        ("c", Code::Aborted),
        ("leaving", Code::FailedPrecondition),
        ("d", Code::InvalidArgument),
    ];
    for (i, (name, code)) in expected.iter().enumerate() {
        assert_eq!(codes[i], (name.to_string(), *code as i32), "{results:?}");
    }
    assert!(results[0].resource_version.parse::<i64>().unwrap() > 0);
    assert!(results[1].error.as_ref().unwrap().message.contains("n0"));
    assert!(
        results[5]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("node_name")
    );
    // Two bindings of one pod in one call: exactly one wins.
    let d: Vec<i32> = results[6..]
        .iter()
        .map(|r| r.error.as_ref().map_or(0, |e| e.code))
        .collect();
    assert!(
        d.contains(&0) && d.contains(&(Code::FailedPrecondition as i32)),
        "{d:?}"
    );
    let node = |name: &'static str| {
        let t = t.clone();
        async move {
            Pod::get_in(t, get("default", name))
                .await
                .unwrap()
                .spec
                .unwrap()
                .node_name
        }
    };
    assert_eq!(node("a").await, "n1");
    assert_eq!(node("b").await, "n0", "a bound pod stays where it is");
    assert_eq!(node("c").await, "");
    assert_eq!(node("leaving").await, "");
    let d_node = node("d").await;
    assert!(d_node == "n2" || d_node == "n3", "{d_node}");

    // Storage saw exactly the two successful bindings: a watch from before
    // the call sees a and d change, then the sentinel bound after it.
    let mut events = Pod::watch_in(
        t.clone(),
        WatchParams {
            namespace: "default".into(),
            resource_version: before,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    client
        .bind_pod(binding("sentinel", "n9", ""))
        .await
        .unwrap();
    let mut changed = Vec::new();
    while let Some(e) = events.next().await {
        let e = e.unwrap();
        let name = e.object.unwrap().name().to_owned();
        if name == "sentinel" {
            break;
        }
        changed.push(name);
    }
    // The bindings of one call are made concurrently: in any order.
    changed.sort();
    assert_eq!(changed, ["a", "d"], "one write per successful binding");

    let too_many = BindPodsRequest {
        bindings: (0..1001)
            .map(|i| binding(&format!("p{i}"), "n1", ""))
            .collect(),
    };
    let err = client.bind_pods(too_many).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("bindings"), "{}", err.message());
}

async fn list_filters_by_label_and_field_and_pages_consistently(s: &TestServer) {
    let t = s.transport().await;
    for i in 0..25 {
        let app = if i % 2 == 0 { "web" } else { "db" };
        Pod::create_in(
            t.clone(),
            labeled(pod("default", &format!("p{i:02}")), &[("app", app)]),
        )
        .await
        .unwrap();
    }
    let mut client = PodServiceClient::new(t.clone());
    client
        .bind_pod(BindPodRequest {
            namespace: "default".into(),
            name: "p03".into(),
            node_name: "n1".into(),
            uid: String::new(),
        })
        .await
        .unwrap();
    let web = Pod::list_in(
        t.clone(),
        ListParams {
            label_selector: "app=web".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(web.items.len(), 13);
    let on_n1 = Pod::list_in(
        t.clone(),
        ListParams {
            field_selector: "spec.nodeName=n1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        on_n1.items.iter().map(|p| p.name()).collect::<Vec<_>>(),
        ["p03"]
    );
    let unbound_db = Pod::list_in(
        t.clone(),
        ListParams {
            label_selector: "app in (db)".into(),
            field_selector: "spec.nodeName!=n1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(unbound_db.items.len(), 11);

    // Pages of 10 at one revision, even while objects change in between.
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    let mut first_rv = String::new();
    loop {
        let page = Pod::list_in(
            t.clone(),
            ListParams {
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        pages += 1;
        let meta = page.list_meta();
        if first_rv.is_empty() {
            first_rv = meta.resource_version.clone();
            // A change after the first page is not seen by the next pages.
            Pod::delete_in(t.clone(), del("default", "p20"))
                .await
                .unwrap();
        } else {
            assert_eq!(
                meta.resource_version, first_rv,
                "every page is read at one revision"
            );
        }
        assert!(page.items.len() <= 10);
        names.extend(page.items.iter().map(|p| p.name().to_owned()));
        if meta.next_page_token.is_empty() {
            break;
        }
        token = meta.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 25, "p20 is still in the paged snapshot");
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, names, "pages are in order, without repeats");

    // Filtered paging.
    let page = Pod::list_in(
        t.clone(),
        ListParams {
            label_selector: "app=db".into(),
            page_size: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.items.len(), 5);
    assert!(page.items.iter().all(|p| p.meta().labels["app"] == "db"));
    assert!(!page.list_meta().next_page_token.is_empty());
    // Another namespace is empty.
    let other = Pod::list_in(
        t,
        ListParams {
            namespace: "skiff-system".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(other.items.is_empty());
}

async fn deleting_a_bound_pod_is_graceful(s: &TestServer) {
    let t = s.transport().await;
    let mut p = pod("default", "running");
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(20);
    Pod::create_in(t.clone(), p).await.unwrap();
    PodServiceClient::new(t.clone())
        .bind_pod(BindPodRequest {
            namespace: "default".into(),
            name: "running".into(),
            node_name: "n1".into(),
            uid: String::new(),
        })
        .await
        .unwrap();
    let marked = Pod::delete_in(t.clone(), del("default", "running"))
        .await
        .unwrap();
    assert_eq!(marked.meta().deletion_grace_period_seconds, Some(20));
    assert!(marked.meta().deletion_timestamp.is_some());
    assert!(
        Pod::get_in(t.clone(), get("default", "running"))
            .await
            .is_ok()
    );
    // Its kubelet reporting status meanwhile (and any other update) does
    // not end the graceful period.
    let mut reported = Pod::get_in(t.clone(), get("default", "running"))
        .await
        .unwrap();
    reported.status.get_or_insert_with(Default::default).phase = "Running".into();
    Pod::update_status_in(t.clone(), reported).await.unwrap();
    let mut labelled = Pod::get_in(t.clone(), get("default", "running"))
        .await
        .unwrap();
    labelled
        .meta_mut()
        .labels
        .insert("seen".into(), "yes".into());
    Pod::update_in(t.clone(), labelled).await.unwrap();
    let still = Pod::get_in(t.clone(), get("default", "running"))
        .await
        .expect("a terminating pod stays through updates");
    assert_eq!(still.meta().deletion_grace_period_seconds, Some(20));
    // The kubelet's final delete, with grace 0, removes it.
    Pod::delete_in(
        t.clone(),
        DeleteParams {
            grace_period_seconds: Some(0),
            ..del("default", "running")
        },
    )
    .await
    .unwrap();
    assert_eq!(
        Pod::get_in(t.clone(), get("default", "running"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // With a finalizer: the final delete ends the graceful period, and the
    // finalizer's removal then removes the pod.
    let mut held = pod("default", "held");
    held.meta_mut().finalizers = vec!["example.com/hold".into()];
    held.spec.as_mut().unwrap().node_name = "n1".into();
    Pod::create_in(t.clone(), held).await.unwrap();
    let marked = Pod::delete_in(t.clone(), del("default", "held"))
        .await
        .unwrap();
    assert!(marked.meta().deletion_grace_period_seconds.unwrap_or(0) > 0);
    let after_final = Pod::delete_in(
        t.clone(),
        DeleteParams {
            grace_period_seconds: Some(0),
            ..del("default", "held")
        },
    )
    .await
    .unwrap();
    assert_eq!(after_final.meta().deletion_grace_period_seconds, Some(0));
    let mut released = Pod::get_in(t.clone(), get("default", "held"))
        .await
        .expect("the finalizer holds it");
    released.meta_mut().finalizers.clear();
    Pod::update_in(t.clone(), released).await.unwrap();
    assert_eq!(
        Pod::get_in(t.clone(), get("default", "held"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // An unbound pod goes at once.
    Pod::create_in(t.clone(), pod("default", "pending"))
        .await
        .unwrap();
    Pod::delete_in(t.clone(), del("default", "pending"))
        .await
        .unwrap();
    assert_eq!(
        Pod::get_in(t, get("default", "pending"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

async fn namespaces_terminate_and_refuse_new_objects(s: &TestServer) {
    let t = s.transport().await;
    let all = Namespace::list_in(t.clone(), ListParams::default())
        .await
        .unwrap();
    let names: Vec<_> = all.items.iter().map(|n| n.name().to_owned()).collect();
    for expected in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "skiff-system",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} exists from the first start: {names:?}"
        );
    }
    let ns = Namespace::create_in(
        t.clone(),
        Namespace {
            metadata: meta("", "team"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(ns.status.as_ref().unwrap().phase, "Active");
    assert_eq!(ns.spec.as_ref().unwrap().finalizers, ["kubernetes"]);
    Pod::create_in(t.clone(), pod("team", "a")).await.unwrap();
    let marked = Namespace::delete_in(t.clone(), del("", "team"))
        .await
        .unwrap();
    assert_eq!(marked.status.as_ref().unwrap().phase, "Terminating");
    let err = Pod::create_in(t.clone(), pod("team", "b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Releasing the finalizer (the namespace controller's job) removes it.
    let mut release = Namespace::get_in(t.clone(), get("", "team")).await.unwrap();
    release.spec.as_mut().unwrap().finalizers.clear();
    Namespace::update_in(t.clone(), release).await.unwrap();
    assert_eq!(
        Namespace::get_in(t.clone(), get("", "team"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = Namespace::create_in(
        t,
        Namespace {
            metadata: meta("", "has.dot"),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "namespace names are DNS labels"
    );
}

async fn watch_from_a_resource_version_streams_changes(s: &TestServer) {
    let t = s.transport().await;
    let a = Pod::create_in(t.clone(), labeled(pod("default", "a"), &[("app", "web")]))
        .await
        .unwrap();
    let mut w = Pod::watch_in(
        t.clone(),
        WatchParams {
            resource_version: a.meta().resource_version.clone(),
            label_selector: "app=web".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Pod::create_in(t.clone(), labeled(pod("default", "b"), &[("app", "web")]))
        .await
        .unwrap();
    Pod::create_in(
        t.clone(),
        labeled(pod("default", "other"), &[("app", "db")]),
    )
    .await
    .unwrap();
    let mut moved = Pod::get_in(t.clone(), get("default", "a")).await.unwrap();
    moved.meta_mut().labels.insert("app".into(), "db".into());
    Pod::update_in(t.clone(), moved).await.unwrap();
    Pod::delete_in(t.clone(), del("default", "b"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        seen.push((ev.event_type(), ev.object.unwrap().meta().name.clone()));
    }
    assert_eq!(
        seen,
        [
            (EventType::Added, "b".to_owned()),
            (EventType::Deleted, "a".to_owned()),
            (EventType::Deleted, "b".to_owned()),
        ],
        "an object leaving the selector is DELETED"
    );
}

async fn scale_sets_replicas(s: &TestServer) {
    let t = s.transport().await;
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let rs = ReplicaSet {
        metadata: meta("default", "web"),
        spec: Some(ReplicaSetSpec {
            replicas: Some(1),
            selector: Some(LabelSelector {
                match_labels: labels.clone(),
                match_expressions: vec![],
            }),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: labels.clone(),
                    ..Default::default()
                }),
                spec: pod("", "").spec,
            }),
            min_ready_seconds: 0,
        }),
        status: None,
    };
    ReplicaSet::create_in(t.clone(), rs.clone()).await.unwrap();
    let scaled = ReplicaSetServiceClient::new(t.clone())
        .scale_replica_set(ScaleReplicaSetRequest {
            namespace: "default".into(),
            name: "web".into(),
            replicas: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .replica_set
        .unwrap();
    assert_eq!(scaled.spec.as_ref().unwrap().replicas, Some(5));
    assert_eq!(scaled.meta().generation, 2);
    // A selector that does not match the template is refused.
    let mut bad = rs;
    bad.meta_mut().name = "bad".into();
    bad.spec
        .as_mut()
        .unwrap()
        .selector
        .as_mut()
        .unwrap()
        .match_labels
        .insert("app".into(), "db".into());
    let err = ReplicaSet::create_in(t, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("spec.template.metadata.labels"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scoped_objects_ignore_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::embedded(dir.path()).await;
    let t: Transport = s.transport().await;
    let node = Node::create_in(
        t.clone(),
        Node {
            metadata: meta("whatever", "n1"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(node.meta().namespace, "");
    let listed = Node::list_in(t, ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: meta("default", name),
        data: data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

async fn config_maps_validate_keys_and_immutable_ones_refuse_changes(s: &TestServer) {
    let t = s.transport().await;
    let mut cm = config_map("app", &[("game.properties", "lives=3"), ("ui.json", "{}")]);
    cm.binary_data
        .insert("logo.png".into(), vec![0x89, b'P', b'N', b'G']);
    let stored = ConfigMap::create_in(t.clone(), cm).await.unwrap();
    assert_eq!(stored.data["game.properties"], "lives=3");
    assert_eq!(stored.binary_data["logo.png"], [0x89, b'P', b'N', b'G']);

    let before = revision(s).await;
    let mut dup = config_map("dup", &[("k", "v")]);
    dup.binary_data.insert("k".into(), vec![1]);
    for (bad, field) in [
        (config_map("slash", &[("a/b", "x")]), "data[a/b]"),
        (config_map("dots", &[("..hidden", "x")]), "data[..hidden]"),
        (config_map("dot", &[(".", "x")]), "data[.]"),
        (dup, "binaryData[k]"),
    ] {
        let name = bad.name().to_owned();
        let err = ConfigMap::create_in(t.clone(), bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let br = err
            .get_details_bad_request()
            .expect("BadRequest names the field");
        assert!(
            br.field_violations.iter().any(|v| v.field == field),
            "{name}: {br:?}"
        );
        assert_eq!(
            ConfigMap::get_in(t.clone(), get("default", &name))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound,
            "nothing stored"
        );
    }
    assert_eq!(revision(s).await, before, "storage unchanged");

    let mut frozen = config_map("frozen", &[("k", "v")]);
    frozen.immutable = Some(true);
    let frozen = ConfigMap::create_in(t.clone(), frozen).await.unwrap();
    let mut changed = frozen.clone();
    changed.data.insert("k".into(), "w".into());
    let err = ConfigMap::update_in(t.clone(), changed).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("data"), "{}", err.message());
    let mut thawed = frozen.clone();
    thawed.immutable = Some(false);
    let err = ConfigMap::update_in(t.clone(), thawed).await.unwrap_err();
    assert!(err.message().contains("immutable"), "{}", err.message());
    let mut relabelled = frozen.clone();
    relabelled
        .meta_mut()
        .labels
        .insert("tier".into(), "web".into());
    ConfigMap::update_in(t.clone(), relabelled)
        .await
        .expect("metadata of an immutable ConfigMap may change");
    let kept = ConfigMap::get_in(t.clone(), get("default", "frozen"))
        .await
        .unwrap();
    assert_eq!(kept.data["k"], "v");
}

/// Creates the object of a one-document manifest through the dynamic client.
async fn create_manifest(
    t: &Transport,
    yaml: &str,
) -> Result<serde_json::Value, skiff::client::Error> {
    let mut docs = skiff::manifest::parse(yaml, "test").expect("the manifest parses");
    let m = docs.remove(0);
    let client = skiff::client::dynamic::DynamicClient::new(t.clone());
    let created = client.create(&m.kind, m.object).await?;
    Ok(skiff::manifest::message_value(&created))
}

const JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: pi, namespace: default}
spec:
  template:
    spec:
      containers:
      - name: pi
        image: perl:5.34.0
        command: ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]
      restartPolicy: Never
  backoffLimit: 4
"#;

const CRON_JOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: hello, namespace: default}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: hello
            image: busybox:1.28
            imagePullPolicy: IfNotPresent
            command: [/bin/sh, -c, date; echo Hello from the Kubernetes cluster]
          restartPolicy: OnFailure
"#;

const DAEMON_SET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: fluentd-elasticsearch
  namespace: kube-system
  labels: {k8s-app: fluentd-logging}
spec:
  selector:
    matchLabels: {name: fluentd-elasticsearch}
  template:
    metadata:
      labels: {name: fluentd-elasticsearch}
    spec:
      tolerations:
      - key: node-role.kubernetes.io/control-plane
        operator: Exists
        effect: NoSchedule
      containers:
      - name: fluentd-elasticsearch
        image: quay.io/fluentd_elasticsearch/fluentd:v2.5.2
        resources:
          limits: {memory: 200Mi}
          requests: {cpu: 100m, memory: 200Mi}
        volumeMounts:
        - name: varlog
          mountPath: /var/log
      terminationGracePeriodSeconds: 30
      volumes:
      - name: varlog
        hostPath:
          path: /var/log
"#;

const STATEFUL_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: default}
spec:
  selector:
    matchLabels: {app: nginx}
  serviceName: "nginx"
  replicas: 3
  minReadySeconds: 10
  template:
    metadata:
      labels: {app: nginx}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.24
        ports:
        - containerPort: 80
          name: web
        volumeMounts:
        - name: www
          mountPath: /usr/share/nginx/html
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ "ReadWriteOnce" ]
      storageClassName: "my-storage-class"
      resources:
        requests:
          storage: 1Gi
"#;

const CLAIM: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests: {storage: 1Gi}
"#;

async fn workload_and_storage_kinds_default_as_kubernetes_and_refuse_bad_input_naming_the_field(
    s: &TestServer,
) {
    let t = s.transport().await;
    // The documentation's manifests apply unchanged and get Kubernetes' defaults.
    let job = create_manifest(&t, JOB).await.unwrap();
    let uid = job["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(job["spec"]["completions"], 1);
    assert_eq!(job["spec"]["parallelism"], 1);
    assert_eq!(job["spec"]["backoffLimit"], 4);
    assert_eq!(job["spec"]["completionMode"], "NonIndexed");
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid.as_str()
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"],
        "pi"
    );
    let cj = create_manifest(&t, CRON_JOB).await.unwrap();
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
    let ds = create_manifest(&t, DAEMON_SET).await.unwrap();
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "1"
    );
    let sts = create_manifest(&t, STATEFUL_SET).await.unwrap();
    assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    // A claim naming no class gets the default one, local-path.
    let claim = create_manifest(&t, CLAIM).await.unwrap();
    assert_eq!(claim["spec"]["storageClassName"], "local-path");
    assert_eq!(claim["status"]["phase"], "Pending");
    let none = CLAIM
        .replace("name: data", "name: no-class")
        .replace("accessModes", "storageClassName: \"\"\n  accessModes");
    let claim = create_manifest(&t, &none).await.unwrap();
    assert_eq!(
        claim["spec"]["storageClassName"], "",
        "\"\" asks for no class"
    );

    let before = revision(s).await;
    for (yaml, field) in [
        (
            JOB.replace("Never", "Always"),
            "spec.template.spec.restartPolicy",
        ),
        (
            JOB.replace("backoffLimit: 4", "backoffLimit: -1"),
            "spec.backoffLimit",
        ),
        (
            JOB.replace(
                "backoffLimit: 4",
                "completionMode: Indexed\n  parallelism: 2",
            ),
            "spec.completions",
        ),
        (
            JOB.replace("backoffLimit: 4", "selector: {matchLabels: {app: pi}}"),
            "spec.selector",
        ),
        (CRON_JOB.replace("* * * * *", "* * * *"), "spec.schedule"),
        (CRON_JOB.replace("* * * * *", "61 * * * *"), "spec.schedule"),
        (
            CRON_JOB.replace("schedule:", "timeZone: Mars/Olympus\n  schedule:"),
            "spec.timeZone",
        ),
        (
            CRON_JOB.replace("schedule:", "concurrencyPolicy: Sometimes\n  schedule:"),
            "spec.concurrencyPolicy",
        ),
        (
            CRON_JOB.replace("OnFailure", "Always"),
            "spec.jobTemplate.spec.template.spec.restartPolicy",
        ),
        (
            CRON_JOB.replace("name: hello,", &format!("name: {},", "h".repeat(53))),
            "metadata.name",
        ),
        (
            DAEMON_SET.replace(
                "labels: {name: fluentd-elasticsearch}",
                "labels: {name: other}",
            ),
            "spec.template.metadata.labels",
        ),
        (
            DAEMON_SET.replace(
                "spec:\n  selector",
                "spec:\n  updateStrategy: {type: Sometimes}\n  selector",
            ),
            "spec.updateStrategy.type",
        ),
        (
            STATEFUL_SET.replace("\"ReadWriteOnce\"", "\"ReadWriteSometimes\""),
            "spec.volumeClaimTemplates[0].spec.accessModes",
        ),
        (
            STATEFUL_SET.replace("storage: 1Gi", "cpu: 1"),
            "spec.volumeClaimTemplates[0].spec.resources.requests[storage]",
        ),
        (
            STATEFUL_SET.replace("podManagementPolicy", "x").replace(
                "serviceName",
                "podManagementPolicy: Sometimes\n  serviceName",
            ),
            "spec.podManagementPolicy",
        ),
        (CLAIM.replace("[ReadWriteOnce]", "[]"), "spec.accessModes"),
        (
            CLAIM.replace("storage: 1Gi", "storage: 0"),
            "spec.resources.requests[storage]",
        ),
        (
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  local: {path: /mnt/disk}
"#
            .to_owned(),
            "spec.nodeAffinity",
        ),
        (
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv2}
spec:
  accessModes: [ReadWriteOnce]
  hostPath: {path: /mnt/disk}
"#
            .to_owned(),
            "spec.capacity[storage]",
        ),
        (
            r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: example.com/fast
volumeBindingMode: Eventually
"#
            .to_owned(),
            "volumeBindingMode",
        ),
        (
            r#"
apiVersion: v1
kind: Pod
metadata: {name: cm-pod, namespace: default}
spec:
  containers: [{name: c, image: busybox, volumeMounts: [{name: config, mountPath: /etc/config}]}]
  volumes:
  - name: config
    configMap: {name: special-config, items: [{key: a, path: ../escape}]}
"#
            .to_owned(),
            "spec.volumes[0].configMap.items[0].path",
        ),
        (
            r#"
apiVersion: v1
kind: Pod
metadata: {name: env-pod, namespace: default}
spec:
  containers: [{name: c, image: busybox, envFrom: [{prefix: X_}]}]
"#
            .to_owned(),
            "spec.containers[0].envFrom[0]",
        ),
        (
            r#"
apiVersion: v1
kind: Pod
metadata: {name: env-pod2, namespace: default}
spec:
  containers: [{name: c, image: busybox, env: [{name: A, valueFrom: {configMapKeyRef: {name: cm}}}]}]
"#
            .to_owned(),
            "spec.containers[0].env[0].valueFrom.configMapKeyRef.key",
        ),
    ] {
        let err = create_manifest(&t, &yaml).await.unwrap_err();
        let skiff::client::Error::Invalid { fields, .. } = &err else {
            panic!("{field}: expected INVALID_ARGUMENT, got {err:?}");
        };
        assert!(
            fields.iter().any(|(f, _)| f == field),
            "{field}: {fields:?}"
        );
    }
    assert_eq!(revision(s).await, before, "nothing stored");

    // What may not change once made.
    let client = skiff::client::dynamic::DynamicClient::new(t.clone());
    let job_kind = skiff::client::dynamic::DynamicKind::of(&skiff::api::batch::v1::Job::INFO);
    let mut changed = skiff::manifest::parse(&JOB.replace("perl:5.34.0", "perl:5.36"), "test")
        .unwrap()
        .remove(0)
        .value;
    changed["metadata"]["resourceVersion"] = job["metadata"]["resourceVersion"].clone();
    let msg = skiff::manifest::to_message(&job_kind.message, changed, "test").unwrap();
    let err = client.update(&job_kind, msg).await.unwrap_err();
    let skiff::client::Error::Invalid { fields, .. } = &err else {
        panic!("expected INVALID_ARGUMENT, got {err:?}");
    };
    assert!(
        fields.iter().any(|(f, _)| f == "spec.template"),
        "{fields:?}"
    );
}

/// examples/kubernetes-docs holds manifests copied from the Kubernetes
/// documentation: every object of every file is created as it is.
async fn the_kubernetes_documentation_examples_are_accepted_unchanged(s: &TestServer) {
    let t = s.transport().await;
    let client = skiff::client::dynamic::DynamicClient::new(t.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes-docs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let mut kinds = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for m in skiff::manifest::parse(&text, &f.display().to_string()).unwrap() {
            let mut object = m.object.clone();
            // Manifests without a namespace go to default, as `skiff apply` does.
            let value = skiff::manifest::message_value(&object);
            if m.kind.info.namespaced && value["metadata"]["namespace"].is_null() {
                let mut v = m.value.clone();
                v["metadata"]["namespace"] = "default".into();
                object = skiff::manifest::to_message(&m.kind.message, v, "test").unwrap();
            }
            client
                .create(&m.kind, object)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", m.origin));
            kinds.push(m.kind.info.kind);
        }
    }
    for kind in [
        "Job",
        "CronJob",
        "DaemonSet",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Pod",
    ] {
        assert!(
            kinds.contains(&kind),
            "{kind} missing from the examples: {kinds:?}"
        );
    }
}

async fn the_system_namespaces_refuse_deletion(s: &TestServer) {
    let t = s.transport().await;
    for name in ["default", "kube-system", "kube-public"] {
        let err = Namespace::delete_in(t.clone(), del("", name))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err:?}");
        assert!(
            err.message().contains("this namespace may not be deleted"),
            "{}",
            err.message()
        );
        let ns = Namespace::get_in(t.clone(), get("", name)).await.unwrap();
        assert!(ns.meta().deletion_timestamp.is_none(), "{name} untouched");
    }
    // kube-node-lease may go, as in Kubernetes.
    Namespace::delete_in(t.clone(), del("", "kube-node-lease"))
        .await
        .unwrap();
}

async fn malformed_and_contradictory_requests_are_refused_naming_the_field_and_change_nothing(
    s: &TestServer,
) {
    let t = s.transport().await;
    for name in ["m1", "m2", "m3"] {
        Pod::create_in(t.clone(), pod("default", name))
            .await
            .unwrap();
    }
    let before = revision(s).await;

    // Bytes that are not a CreatePodRequest: a name that is not UTF-8, and
    // a varint where a message belongs.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for bytes in [
        vec![0x0a, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe],
        vec![0x08, 0x01],
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(
                tonic::Request::new(bytes.clone()),
                http::uri::PathAndQuery::from_static("/skiff.core.v1.PodService/CreatePod"),
                skiff_apiserver::testing::RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bytes:x?}: {err:?}");
        assert!(err.message().contains("does not decode"), "{err:?}");
    }
    // The health service too (it was tonic-health's, whose codec answered
    // INTERNAL): found by `skiff-loadtest fuzz`.
    for path in [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let err = grpc
            .server_streaming(
                tonic::Request::new(vec![0x0f]),
                http::uri::PathAndQuery::from_static(path),
                skiff_apiserver::testing::RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err:?}");
        assert!(err.message().contains("does not decode"), "{err:?}");
    }

    // A page token fixes the revision: a resource version beside it is refused.
    let first = Pod::list_in(
        t.clone(),
        ListParams {
            namespace: "default".into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let token = first.metadata.unwrap().next_page_token;
    assert!(!token.is_empty());
    let err = Pod::list_in(
        t.clone(),
        ListParams {
            namespace: "default".into(),
            page_size: 1,
            page_token: token.clone(),
            resource_version: "0".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "resource_version"
    );
    // The token alone still pages.
    Pod::list_in(
        t.clone(),
        ListParams {
            namespace: "default".into(),
            page_size: 1,
            page_token: token,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A hand-made token with a negative revision was never issued here.
    use base64::Engine as _;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode("v1\n-5\n/registry/pods/default/m1");
    let err = Pod::list_in(
        t.clone(),
        ListParams {
            namespace: "default".into(),
            page_token: forged,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("not a token this server issued"),
        "{err:?}"
    );

    // A list's error names the request, not an object called "".
    let err = Pod::list_in(
        t.clone(),
        ListParams {
            label_selector: "app in (".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!err.message().contains("\"\""), "{}", err.message());
    assert!(
        err.message().contains("label_selector"),
        "{}",
        err.message()
    );

    // Negative tail lines are a mistake, not an empty log.
    let mut pods = PodServiceClient::new(t.clone());
    let err = pods
        .get_pod_logs(skiff::api::core::v1::GetPodLogsRequest {
            namespace: "default".into(),
            name: "m1".into(),
            tail_lines: Some(-5),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "tail_lines"
    );

    // An annotation key is called one.
    let mut p = pod("default", "annotated");
    p.meta_mut()
        .annotations
        .insert("bad key!".into(), "v".into());
    let err = Pod::create_in(t.clone(), p).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("annotation key"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("label key"), "{}", err.message());

    // Grace periods and deadlines past what a clock holds (found by
    // `skiff-loadtest fuzz`: a delete with i64::MAX seconds panicked adding
    // them to the present).
    let err = Pod::delete_in(
        t.clone(),
        DeleteParams {
            grace_period_seconds: Some(i64::MAX),
            ..del("default", "m1")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "grace_period_seconds"
    );
    let mut p = pod("default", "forever");
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(i64::MAX);
    let err = Pod::create_in(t.clone(), p).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.get_details_bad_request().unwrap().field_violations[0].field,
        "spec.terminationGracePeriodSeconds"
    );

    assert_eq!(
        revision(s).await,
        before,
        "a refused request changed storage"
    );
}
