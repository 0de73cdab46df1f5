//! Who may reach what: authentication (static tokens, service-account
//! tokens, client certificates over mutual TLS), RBAC for every built-in
//! identity and custom roles over every kind and verb, the node
//! restriction, admission (service accounts, LimitRange, ResourceQuota
//! under concurrent creates) and overload protection — all through a real
//! TLS gRPC server in this process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff::api::coordination::v1::{Lease, LeaseSpec};
use skiff::api::core::v1::{
    Container, EnvVar, EnvVarSource, LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, Node,
    ObjectReference, Pod, PodSpec, ResourceQuota, ResourceQuotaSpec, ResourceRequirements, Secret,
    SecretKeySelector, ServiceAccount,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use skiff::client::dynamic::{DynamicClient, DynamicKind};
use skiff::client::{Api, Credentials, Error, TlsOptions, Transport, connect_with};
use skiff::params::{DeleteParams, ListParams, WatchParams};
use skiff::testing::eventually;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::authn::{AuthConfig, StaticTokens};
use skiff_apiserver::filters::LimitsConfig;
use skiff_apiserver::pki::{CertificateAuthority, CertifiedKey};
use skiff_apiserver::server::{SecurityConfig, TlsPem};
use skiff_apiserver::testing::TestServer;

/// How long a change of credentials or limits may take to apply.
const TEN_SECONDS: Duration = Duration::from_secs(10);

const TOKENS: &str = "\
admin-token,skiff-admin,1,\"system:masters\"
scheduler-token,system:kube-scheduler,2
cm-token,system:kube-controller-manager,3
proxy-token,system:kube-proxy,4
alice-token,alice,5
bob-token,bob,6,\"devs\"
carol-token,carol,7
";

/// A TLS API server with RBAC, its CA, and the service-account key.
struct Secure {
    server: TestServer,
    ca: CertificateAuthority,
    sa_key: ed25519_dalek::SigningKey,
    _dir: tempfile::TempDir,
}

impl Secure {
    async fn start(limits: Option<LimitsConfig>, anonymous: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test-ca").unwrap();
        let serving = ca.issue_server(&["127.0.0.1".into()]).unwrap();
        let sa_key = skiff::token::generate_key();
        let config = ServerConfig {
            security: SecurityConfig {
                authentication: Some(AuthConfig {
                    tokens: StaticTokens::parse(TOKENS).unwrap(),
                    service_account_key: Some(sa_key.verifying_key()),
                    anonymous,
                }),
                rbac: true,
                limits,
                audit: Some((
                    dir.path().join("audit.log"),
                    skiff_apiserver::filters::AuditLevel::Metadata,
                )),
                tls: Some(TlsPem {
                    cert: serving.cert_pem.into_bytes(),
                    key: serving.key_pem.into_bytes(),
                    client_ca: Some(ca.cert_pem.clone().into_bytes()),
                }),
                token_signer: Some(skiff_apiserver::registry::service_account::TokenSigner(
                    std::sync::Arc::new(sa_key.clone()),
                )),
            },
            ..Default::default()
        };
        let server = TestServer::embedded_with(&dir.path().join("store"), config).await;
        Self {
            server,
            ca,
            sa_key,
            _dir: dir,
        }
    }

    fn audit_log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("audit.log")).unwrap_or_default()
    }

    fn tls(&self, identity: Option<&CertifiedKey>) -> TlsOptions {
        TlsOptions {
            ca_pem: self.ca.cert_pem.clone().into_bytes(),
            identity: identity.map(|p| {
                (
                    p.cert_pem.clone().into_bytes(),
                    p.key_pem.clone().into_bytes(),
                )
            }),
        }
    }

    async fn as_token(&self, token: &str) -> Transport {
        connect_with(
            &self.server.addr.to_string(),
            Credentials::bearer(token).unwrap(),
            Some(&self.tls(None)),
        )
        .await
        .unwrap()
    }

    async fn anonymous(&self) -> Transport {
        connect_with(
            &self.server.addr.to_string(),
            Credentials::none(),
            Some(&self.tls(None)),
        )
        .await
        .unwrap()
    }

    async fn as_cert(&self, pair: &CertifiedKey) -> Result<Transport, skiff::client::ConnectError> {
        connect_with(
            &self.server.addr.to_string(),
            Credentials::none(),
            Some(&self.tls(Some(pair))),
        )
        .await
    }

    async fn admin(&self) -> Transport {
        self.as_token("admin-token").await
    }
}

fn meta(ns: &str, name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    })
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
    PolicyRule {
        api_groups: v(groups),
        resources: v(resources),
        verbs: v(verbs),
        resource_names: v(names),
    }
}

fn subject(kind: &str, name: &str, ns: &str) -> Subject {
    Subject {
        kind: kind.into(),
        api_group: if kind == "ServiceAccount" {
            String::new()
        } else {
            "rbac.authorization.k8s.io".into()
        },
        name: name.into(),
        namespace: ns.into(),
    }
}

fn role_ref(kind: &str, name: &str) -> Option<RoleRef> {
    Some(RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
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
        ..Default::default()
    }
}

fn is_denied<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Forbidden(_)))
}

/// Namespaces a, b; alice reads pods in a (Role); group devs views b
/// (RoleBinding to view); carol deploys everywhere (custom ClusterRole) and
/// reads one secret in a by name; service account a/robot edits a.
async fn set_up_policies(s: &Secure) -> String {
    let admin = s.admin().await;
    for ns in ["a", "b"] {
        Api::<Namespace>::new(admin.clone(), "")
            .create(&Namespace {
                metadata: meta("", ns),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    Api::<Role>::new(admin.clone(), "a")
        .create(&Role {
            metadata: meta("a", "pod-reader"),
            rules: vec![rule(&[""], &["pods"], &["get", "list", "watch"], &[])],
        })
        .await
        .unwrap();
    Api::<Role>::new(admin.clone(), "a")
        .create(&Role {
            metadata: meta("a", "one-secret"),
            rules: vec![rule(&[""], &["secrets"], &["get"], &["probe"])],
        })
        .await
        .unwrap();
    let bindings = Api::<RoleBinding>::new(admin.clone(), "a");
    for (ns, name, subj, role) in [
        (
            "a",
            "alice-reads-pods",
            subject("User", "alice", ""),
            role_ref("Role", "pod-reader"),
        ),
        (
            "a",
            "carol-one-secret",
            subject("User", "carol", ""),
            role_ref("Role", "one-secret"),
        ),
        (
            "b",
            "devs-view",
            subject("Group", "devs", ""),
            role_ref("ClusterRole", "view"),
        ),
        (
            "a",
            "robot-edits",
            subject("ServiceAccount", "robot", "a"),
            role_ref("ClusterRole", "edit"),
        ),
    ] {
        Api::<RoleBinding>::new(admin.clone(), ns)
            .create(&RoleBinding {
                metadata: meta(ns, name),
                subjects: vec![subj],
                role_ref: role,
            })
            .await
            .unwrap();
    }
    let _ = bindings;
    Api::<ClusterRole>::new(admin.clone(), "")
        .create(&ClusterRole {
            metadata: meta("", "deployer"),
            rules: vec![rule(
                &["apps"],
                &["deployments", "replicasets"],
                &["get", "list", "watch", "create", "update", "delete"],
                &[],
            )],
        })
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::new(admin.clone(), "")
        .create(&ClusterRoleBinding {
            metadata: meta("", "carol-deploys"),
            subjects: vec![subject("User", "carol", "")],
            role_ref: role_ref("ClusterRole", "deployer"),
        })
        .await
        .unwrap();
    // The service account robot and its token.
    let sa = Api::<ServiceAccount>::new(admin.clone(), "a")
        .create(&ServiceAccount {
            metadata: meta("a", "robot"),
            secrets: vec![ObjectReference {
                name: "robot-token-x".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let uid = sa.metadata.as_ref().unwrap().uid.clone();
    let token = skiff::token::sign(
        &skiff::token::Claims::new("a", "robot", &uid, "robot-token-x"),
        &s.sa_key,
    );
    Api::<Secret>::new(admin.clone(), "a")
        .create(&Secret {
            metadata: meta("a", "robot-token-x"),
            data: [("token".to_owned(), token.clone().into_bytes())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    token
}

const READ: &[&str] = &["get", "list", "watch"];
const ALL: &[&str] = &["get", "list", "watch", "create", "update", "delete"];

/// What each identity may do, written from the roles' meaning (not from
/// the server's code): (resource, verb, namespace; "" = cluster scope or
/// all namespaces) → allowed.
fn expected(identity: &str, resource: &str, verb: &str, ns: &str) -> bool {
    let read = READ.contains(&verb);
    let view = [
        "pods",
        "services",
        "endpoints",
        "replicasets",
        "deployments",
        "daemonsets",
        "statefulsets",
        "jobs",
        "cronjobs",
        "configmaps",
        "persistentvolumeclaims",
        "serviceaccounts",
        "events",
        "limitranges",
        "resourcequotas",
        "leases",
    ];
    let edit = [
        "pods",
        "services",
        "endpoints",
        "replicasets",
        "deployments",
        "daemonsets",
        "statefulsets",
        "jobs",
        "cronjobs",
        "configmaps",
        "persistentvolumeclaims",
        "serviceaccounts",
        "events",
        "limitranges",
        "secrets",
        "leases",
    ];
    match identity {
        "admin" | "controller-manager" => true,
        "scheduler" => match resource {
            "pods" => read || verb == "delete",
            "nodes" | "namespaces" | "replicasets" | "services" => read,
            "persistentvolumes" | "storageclasses" => read,
            "persistentvolumeclaims" => read || verb == "update",
            "events" => ["create", "update", "get", "list"].contains(&verb),
            "leases" => ["get", "create", "update"].contains(&verb),
            _ => false,
        },
        "proxy" => match resource {
            "services" | "endpoints" | "nodes" => read,
            "events" => ["create", "update"].contains(&verb),
            _ => false,
        },
        "alice" => resource == "pods" && read && ns == "a",
        "bob" => ns == "b" && read && view.contains(&resource),
        // The matrix probes objects named "probe", the one secret carol may get.
        "carol" => {
            ["deployments", "replicasets"].contains(&resource)
                || (resource == "secrets" && verb == "get" && ns == "a")
        }
        "robot" => ns == "a" && edit.contains(&resource),
        other => panic!("unknown identity {other}"),
    }
}

async fn attempt(
    dc: &DynamicClient,
    kind: &DynamicKind,
    verb: &str,
    ns: &str,
) -> Result<(), Error> {
    let name = "probe";
    let object = || {
        skiff::manifest::to_message(
            &kind.message,
            serde_json::json!({"metadata": {"name": name, "namespace": ns}}),
            "test",
        )
        .unwrap()
    };
    match verb {
        "get" => dc.get(kind, ns, name).await.map(|_| ()),
        "list" => dc
            .list(
                kind,
                &ListParams {
                    namespace: ns.into(),
                    ..Default::default()
                },
            )
            .await
            .map(|_| ()),
        "watch" => dc
            .watch(
                kind,
                &WatchParams {
                    namespace: ns.into(),
                    timeout_seconds: 1,
                    ..Default::default()
                },
            )
            .await
            .map(|_| ()),
        "create" => dc.create(kind, object()).await.map(|_| ()),
        "update" => dc.update(kind, object()).await.map(|_| ()),
        "delete" => dc
            .delete(
                kind,
                &DeleteParams {
                    namespace: ns.into(),
                    name: "absent".into(),
                    ..Default::default()
                },
            )
            .await
            .map(|_| ()),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_may_do_exactly_what_rbac_grants_on_every_kind_verb_and_namespace() {
    let s = Secure::start(None, false).await;
    let robot_token = set_up_policies(&s).await;
    let identities = [
        ("admin", "admin-token".to_owned()),
        ("scheduler", "scheduler-token".into()),
        ("controller-manager", "cm-token".into()),
        ("proxy", "proxy-token".into()),
        ("alice", "alice-token".into()),
        ("bob", "bob-token".into()),
        ("carol", "carol-token".into()),
        ("robot", robot_token),
    ];
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (identity, token) in &identities {
        let dc = DynamicClient::new(s.as_token(token).await);
        for info in skiff::KINDS {
            let kind = DynamicKind::of(info);
            // Namespaced kinds in a, in b and across all namespaces (list
            // and watch only); cluster-scoped kinds once.
            let spaces: &[&str] = if info.namespaced {
                &["a", "b", ""]
            } else {
                &[""]
            };
            for ns in spaces {
                for verb in ALL {
                    if info.namespaced && ns.is_empty() && !["list", "watch"].contains(verb) {
                        continue;
                    }
                    let want = expected(identity, info.plural, verb, ns);
                    let got = attempt(&dc, &kind, verb, ns).await;
                    checked += 1;
                    if matches!(got, Err(Error::Unauthenticated(_))) {
                        wrong.push(format!(
                            "{identity} {verb} {} in {ns:?}: unauthenticated",
                            info.plural
                        ));
                    } else if want == is_denied(&got) {
                        wrong.push(format!(
                            "{identity} {verb} {} in {ns:?}: expected {}, got {got:?}",
                            info.plural,
                            if want { "allowed" } else { "PERMISSION_DENIED" }
                        ));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} checks wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(checked > 800, "{checked}");

    // Resource names: carol may get secret a/probe, not others, and not list.
    let carol = Api::<Secret>::new(s.as_token("carol-token").await, "a");
    assert!(!is_denied(&carol.get("probe").await));
    assert!(is_denied(&carol.get("robot-token-x").await));
    assert!(is_denied(&carol.list(&ListParams::default()).await));

    // The audit log has a line per request, without tokens or secret data.
    let audit = s.audit_log();
    assert!(audit.lines().count() >= checked);
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect();
    let alice_denied = lines.iter().find(|l| {
        l["user"] == "alice" && l["status"] == "PermissionDenied" && l["kind"] == "Secret"
    });
    let line = alice_denied.expect("alice's refused secret reads are audited");
    assert!(
        line["verb"].is_string() && line["latency_ms"].is_number(),
        "{line}"
    );
    assert_eq!(line["code"], 7);
    assert!(!audit.contains("admin-token") && !audit.contains("alice-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watch_on_a_multiplexed_stream_is_authorized_as_its_kinds_own_watch() {
    use skiff::api::meta::v1::watch_request::Request as Op;
    use skiff::api::meta::v1::watch_service_client::WatchServiceClient;
    use skiff::api::meta::v1::{WatchCreateRequest, WatchRequest};
    use tokio_stream::StreamExt;
    let s = Secure::start(None, false).await;
    let robot_token = set_up_policies(&s).await;
    let identities = [
        ("scheduler", "scheduler-token".to_owned()),
        ("proxy", "proxy-token".into()),
        ("alice", "alice-token".into()),
        ("bob", "bob-token".into()),
        ("robot", robot_token),
    ];
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (identity, token) in &identities {
        // Every kind in a, in b and across namespaces, on one stream.
        let mut asked = BTreeMap::new();
        for info in skiff::KINDS {
            let spaces: &[&str] = if info.namespaced {
                &["a", "b", ""]
            } else {
                &[""]
            };
            for ns in spaces {
                let id = asked.len() as i64 + 1;
                asked.insert(id, (info.plural, *ns));
            }
        }
        let requests: Vec<WatchRequest> = asked
            .iter()
            .map(|(id, (plural, ns))| WatchRequest {
                request: Some(Op::Create(WatchCreateRequest {
                    watch_id: *id,
                    kind: (*plural).into(),
                    namespace: (*ns).into(),
                    ..Default::default()
                })),
            })
            .collect();
        let mut responses = WatchServiceClient::new(s.as_token(token).await)
            .watch(futures::stream::iter(requests).chain(futures::stream::pending()))
            .await
            .expect("any authenticated user may open the stream")
            .into_inner();
        let mut answered = BTreeMap::new();
        while answered.len() < asked.len() {
            let r = tokio::time::timeout(TEN_SECONDS, responses.next())
                .await
                .expect("an answer for every watch")
                .expect("the stream is open")
                .expect("no stream error");
            if r.created || r.canceled {
                answered.insert(r.watch_id, r.error.map(|e| e.code));
            }
        }
        for (id, (plural, ns)) in &asked {
            checked += 1;
            let want = expected(identity, plural, "watch", ns);
            let got = answered[id];
            if want != got.is_none()
                || got.is_some_and(|c| c != tonic::Code::PermissionDenied as i32)
            {
                wrong.push(format!(
                    "{identity} watch {plural} in {ns:?}: expected {}, got {got:?}",
                    if want { "created" } else { "PERMISSION_DENIED" }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} checks wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(checked > 200, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_reaches_only_its_own_node_lease_pods_and_their_secrets() {
    let s = Secure::start(None, false).await;
    let admin = s.admin().await;
    for n in ["n1", "n2"] {
        Api::<Node>::new(admin.clone(), "")
            .create(&Node {
                metadata: meta("", n),
                ..Default::default()
            })
            .await
            .unwrap();
        Api::<Lease>::new(admin.clone(), "skiff-node-lease")
            .create(&Lease {
                metadata: meta("skiff-node-lease", n),
                spec: Some(LeaseSpec {
                    holder_identity: Some(n.into()),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        Api::<Secret>::new(admin.clone(), "default")
            .create(&Secret {
                metadata: meta("default", &format!("secret-{n}")),
                data: [("k".to_owned(), b"v".to_vec())].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut p = pod("default", &format!("pod-{n}"));
        let spec = p.spec.as_mut().unwrap();
        spec.node_name = n.into();
        spec.containers[0].env.push(EnvVar {
            name: "S".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: format!("secret-{n}"),
                    key: "k".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        Api::<Pod>::new(admin.clone(), "default")
            .create(&p)
            .await
            .unwrap();
    }
    let cert =
        s.ca.issue_client("system:node:n1", &["system:nodes"])
            .unwrap();
    let kubelet = s.as_cert(&cert).await.unwrap();
    let nodes = Api::<Node>::new(kubelet.clone(), "");
    let pods = Api::<Pod>::new(kubelet.clone(), "default");
    let leases = Api::<Lease>::new(kubelet.clone(), "skiff-node-lease");
    let secrets = Api::<Secret>::new(kubelet.clone(), "default");

    nodes.get("n1").await.unwrap();
    assert!(is_denied(&nodes.get("n2").await));
    let mut n1 = nodes.get("n1").await.unwrap();
    n1.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("x".into(), "y".into());
    nodes.update(&n1).await.unwrap();
    let mut n2 = Api::<Node>::new(admin.clone(), "").get("n2").await.unwrap();
    n2.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("x".into(), "y".into());
    assert!(is_denied(&nodes.update(&n2).await));
    assert!(is_denied(
        &nodes.delete("n2", &DeleteParams::default()).await
    ));

    leases.get("n1").await.unwrap();
    assert!(is_denied(&leases.get("n2").await));
    assert!(is_denied(&leases.list(&ListParams::default()).await));

    let mine = ListParams {
        field_selector: "spec.nodeName=n1".into(),
        ..Default::default()
    };
    let listed = pods.list(&mine).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(is_denied(&pods.list(&ListParams::default()).await));
    assert!(is_denied(
        &pods
            .list(&ListParams {
                field_selector: "spec.nodeName=n2".into(),
                ..Default::default()
            })
            .await
    ));
    assert!(is_denied(
        &pods
            .watch(&WatchParams {
                field_selector: "spec.nodeName=n2".into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    ));
    let _watch = pods
        .watch(&WatchParams {
            field_selector: "spec.nodeName=n1".into(),
            timeout_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    pods.get("pod-n1").await.unwrap();
    assert!(is_denied(&pods.get("pod-n2").await));
    assert!(is_denied(&pods.create(&pod("default", "sneaky")).await));
    assert!(is_denied(
        &pods
            .delete(
                "pod-n2",
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                }
            )
            .await
    ));

    secrets.get("secret-n1").await.unwrap();
    assert!(is_denied(&secrets.get("secret-n2").await));
    assert!(is_denied(&secrets.list(&ListParams::default()).await));
    // Not in the node group: a certificate for a look-alike name is nobody's kubelet.
    let fake = s.ca.issue_client("system:node:n2", &["devs"]).unwrap();
    let fake = Api::<Pod>::new(s.as_cert(&fake).await.unwrap(), "default");
    assert!(is_denied(&fake.get("pod-n2").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_revoked_and_malformed_credentials_are_refused() {
    let s = Secure::start(None, false).await;
    let robot = set_up_policies(&s).await;
    let pods = |t: Transport| Api::<Pod>::new(t, "a");
    let unauthenticated = |r: Result<skiff::client::ObjectList<Pod>, Error>| {
        assert!(matches!(r, Err(Error::Unauthenticated(_))), "{r:?}");
    };
    // The good token works.
    pods(s.as_token(&robot).await)
        .list(&ListParams::default())
        .await
        .unwrap();

    // No credentials, unknown and malformed tokens.
    unauthenticated(pods(s.anonymous().await).list(&ListParams::default()).await);
    // A token of no known shape is unknown to this server, not "malformed".
    let r = pods(s.as_token("nope").await)
        .list(&ListParams::default())
        .await;
    let Err(Error::Unauthenticated(message)) = &r else {
        panic!("{r:?}");
    };
    assert!(message.contains("unknown token"), "{message}");
    assert!(!message.contains("malformed"), "{message}");
    for bad in [
        "nope",
        "a.b.c",
        "eyJhbGciOiJFZERTQSJ9..",
        &robot[..robot.len() - 4],
    ] {
        unauthenticated(
            pods(s.as_token(bad).await)
                .list(&ListParams::default())
                .await,
        );
    }
    // Forged: the same claims signed with another key.
    let sa = Api::<ServiceAccount>::new(s.admin().await, "a")
        .get("robot")
        .await
        .unwrap();
    let uid = sa.metadata.as_ref().unwrap().uid.clone();
    let claims = skiff::token::Claims::new("a", "robot", &uid, "robot-token-x");
    let forged = skiff::token::sign(&claims, &skiff::token::generate_key());
    unauthenticated(
        pods(s.as_token(&forged).await)
            .list(&ListParams::default())
            .await,
    );
    // Expired.
    let mut old = claims.clone();
    old.exp = Some(1_600_000_000);
    let expired = skiff::token::sign(&old, &s.sa_key);
    unauthenticated(
        pods(s.as_token(&expired).await)
            .list(&ListParams::default())
            .await,
    );
    // A token of an account that never existed.
    let ghost = skiff::token::sign(
        &skiff::token::Claims::new("a", "ghost", "uid-0", ""),
        &s.sa_key,
    );
    unauthenticated(
        pods(s.as_token(&ghost).await)
            .list(&ListParams::default())
            .await,
    );

    // Revoked: deleting the token's secret, then (another token) the account.
    let admin = s.admin().await;
    Api::<Secret>::new(admin.clone(), "a")
        .delete("robot-token-x", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the token whose secret was deleted to be refused",
        TEN_SECONDS,
        async || {
            let ok = {
                matches!(
                    pods(s.as_token(&robot).await)
                        .list(&ListParams::default())
                        .await,
                    Err(Error::Unauthenticated(_))
                )
            };
            ok.then_some(())
        },
    )
    .await;
    let no_secret = skiff::token::sign(
        &skiff::token::Claims::new("a", "robot", &uid, ""),
        &s.sa_key,
    );
    pods(s.as_token(&no_secret).await)
        .list(&ListParams::default())
        .await
        .unwrap();
    Api::<ServiceAccount>::new(admin.clone(), "a")
        .delete("robot", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted account's token to be refused",
        TEN_SECONDS,
        async || {
            let ok = {
                matches!(
                    pods(s.as_token(&no_secret).await)
                        .list(&ListParams::default())
                        .await,
                    Err(Error::Unauthenticated(_))
                )
            };
            ok.then_some(())
        },
    )
    .await;

    // Certificates: expired, from another CA, without a user name.
    let expired = s.ca.issue_expired_client("alice", &[]).unwrap();
    assert!(refused(&s, &expired).await, "expired certificate accepted");
    let other_ca = CertificateAuthority::generate("other").unwrap();
    let stranger = other_ca
        .issue_client("skiff-admin", &["system:masters"])
        .unwrap();
    assert!(
        refused(&s, &stranger).await,
        "certificate of another CA accepted"
    );
    let good = s.ca.issue_client("alice", &[]).unwrap();
    pods(s.as_cert(&good).await.unwrap())
        .list(&ListParams::default())
        .await
        .unwrap();
    // A plaintext client gets nothing from a TLS server.
    let plaintext = connect_with(
        &s.server.addr.to_string(),
        Credentials::bearer("admin-token").unwrap(),
        None,
    )
    .await;
    if let Ok(t) = plaintext {
        assert!(pods(t).list(&ListParams::default()).await.is_err());
    }
}

/// Whether a connection with `pair` fails (handshake refused or request failed).
async fn refused(s: &Secure, pair: &CertifiedKey) -> bool {
    match s.as_cert(pair).await {
        Err(_) => true,
        Ok(t) => Api::<Pod>::new(t, "a")
            .list(&ListParams::default())
            .await
            .is_err_and(|e| !matches!(e, Error::Forbidden(_))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_are_allowed_only_when_enabled_and_then_only_as_rbac_says() {
    let s = Secure::start(None, true).await;
    let anon = Api::<Pod>::new(s.anonymous().await, "default");
    assert!(is_denied(&anon.list(&ListParams::default()).await));
    let admin = s.admin().await;
    Api::<ClusterRoleBinding>::new(admin, "")
        .create(&ClusterRoleBinding {
            metadata: meta("", "anonymous-view"),
            subjects: vec![subject("Group", "system:unauthenticated", "")],
            role_ref: role_ref("ClusterRole", "view"),
        })
        .await
        .unwrap();
    eventually("anonymous lists to be allowed", TEN_SECONDS, async || {
        anon.list(&ListParams::default()).await.ok().map(drop)
    })
    .await;
    assert!(is_denied(&anon.create(&pod("default", "p")).await));
}

fn quota(ns: &str, name: &str, hard: &[(&str, &str)]) -> ResourceQuota {
    ResourceQuota {
        metadata: meta(ns, name),
        spec: Some(ResourceQuotaSpec {
            hard: hard
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_never_exceed_a_quota_and_used_matches_reality() {
    let s = Secure::start(None, false).await;
    let admin = s.admin().await;
    Api::<Namespace>::new(admin.clone(), "")
        .create(&Namespace {
            metadata: meta("", "q"),
            ..Default::default()
        })
        .await
        .unwrap();
    // One pod exists before the quota: counted when the quota is created.
    let pods = Api::<Pod>::new(admin.clone(), "q");
    pods.create(&pod("q", "early")).await.unwrap();
    let quotas = Api::<ResourceQuota>::new(admin.clone(), "q");
    quotas
        .create(&quota(
            "q",
            "pods",
            &[("pods", "10"), ("count/deployments.apps", "1")],
        ))
        .await
        .unwrap();
    quotas
        .create(&quota("q", "compute", &[("requests.cpu", "4")]))
        .await
        .unwrap();
    let created = quotas.get("pods").await.unwrap();
    assert_eq!(created.status.unwrap().used["pods"], "1");

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let pods = pods.clone();
            tokio::spawn(async move {
                let mut p = pod("q", &format!("p{i}"));
                p.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
                    requests: [("cpu".to_owned(), "100m".to_owned())].into(),
                    ..Default::default()
                });
                pods.create(&p).await
            })
        })
        .collect();
    let mut admitted = 0;
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(Error::ResourceExhausted { message: m, .. }) => {
                assert!(m.contains("exceeded quota: pods"), "{m}");
                exhausted += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((admitted, exhausted), (9, 41));
    let real = pods.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(real, 10);
    let status = quotas.get("pods").await.unwrap().status.unwrap();
    assert_eq!(status.used["pods"], "10");
    assert_eq!(status.hard["pods"], "10");
    let compute = quotas.get("compute").await.unwrap().status.unwrap();
    assert_eq!(compute.used["requests.cpu"], "900m");

    // Deleting gives the slot back; the next create fits, one more does not.
    let victim = pods.list(&ListParams::default()).await.unwrap().items[1]
        .metadata
        .as_ref()
        .unwrap()
        .name
        .clone();
    assert_ne!(victim, "early");
    pods.delete(
        &victim,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        9
    );
    let status = quotas.get("pods").await.unwrap().status.unwrap();
    assert_eq!(status.used["pods"], "9");
    pods.create(&pod("q", "again")).await.unwrap();
    assert!(matches!(
        pods.create(&pod("q", "over")).await,
        Err(Error::ResourceExhausted { .. })
    ));
    // A failed create (name taken) is refunded; better, it is refused
    // before it is charged, and writes nothing (found by the fuzzer).
    let before = quotas.get("pods").await.unwrap().status.unwrap().used["pods"].clone();
    let revision = s.server.storage.current_revision().await.unwrap();
    assert!(matches!(
        pods.create(&pod("q", "early")).await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(s.server.storage.current_revision().await.unwrap(), revision);
    let after = quotas.get("pods").await.unwrap().status.unwrap().used["pods"].clone();
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_a_service_account_its_token_and_limit_range_defaults() {
    let s = Secure::start(None, false).await;
    let admin = s.admin().await;
    let robot_token = set_up_policies(&s).await;
    let _ = robot_token;
    Api::<LimitRange>::new(admin.clone(), "a")
        .create(&LimitRange {
            metadata: meta("a", "limits"),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    r#type: "Container".into(),
                    max: [("cpu".to_owned(), "2".to_owned())].into(),
                    min: BTreeMap::new(),
                    default: [("cpu".to_owned(), "500m".to_owned())].into(),
                    default_request: [
                        ("cpu".to_owned(), "100m".to_owned()),
                        ("memory".to_owned(), "64Mi".to_owned()),
                    ]
                    .into(),
                }],
            }),
        })
        .await
        .unwrap();
    let pods = Api::<Pod>::new(admin.clone(), "a");
    let p = pods.create(&pod("a", "plain")).await.unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.service_account_name, "default");
    let r = spec.containers[0].resources.clone().unwrap();
    assert_eq!(r.limits["cpu"], "500m");
    assert_eq!(r.requests["cpu"], "100m");
    assert_eq!(r.requests["memory"], "64Mi");

    let mut as_robot = pod("a", "robot-pod");
    as_robot.spec.as_mut().unwrap().service_account_name = "robot".into();
    let created = pods.create(&as_robot).await.unwrap();
    let env = &created.spec.unwrap().containers[0].env;
    let token_ref = env
        .iter()
        .find(|e| e.name == skiff_apiserver::admission::TOKEN_ENV)
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("the token is injected");
    assert_eq!(token_ref.name, "robot-token-x");

    let mut ghost = pod("a", "ghost-pod");
    ghost.spec.as_mut().unwrap().service_account_name = "ghost".into();
    assert!(is_denied(&pods.create(&ghost).await));

    let mut big = pod("a", "big");
    big.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
        limits: [("cpu".to_owned(), "3".to_owned())].into(),
        ..Default::default()
    });
    match pods.create(&big).await {
        Err(Error::Invalid { fields, .. }) => {
            assert_eq!(
                fields[0].0, "spec.containers[0].resources.limits.cpu",
                "{fields:?}"
            );
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    // Nothing was stored for the refused pods.
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.metadata.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["plain", "robot-pod"]);
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_leaves_another_served_and_memory_bounded() {
    let limits = LimitsConfig {
        max_read_only: 40,
        max_mutating: 20,
        per_user_fraction: 0.25,
        max_watches_per_user: 100,
        queue_wait: Duration::from_millis(10),
    };
    let s = Arc::new(Secure::start(Some(limits), false).await);
    let admin = s.admin().await;
    let pods = Api::<Pod>::new(admin.clone(), "default");
    for i in 0..50 {
        pods.create(&pod("default", &format!("p{i}")))
            .await
            .unwrap();
    }
    let rss_before = rss_bytes();
    // The noisy client: cluster-admin too, so only the limits stop it.
    let noisy = Api::<Pod>::new(s.as_token("cm-token").await, "default");
    let mut watches = Vec::new();
    let mut watch_refused = 0;
    for _ in 0..300 {
        match noisy
            .watch(&WatchParams {
                timeout_seconds: 60,
                ..Default::default()
            })
            .await
        {
            Ok(w) => watches.push(w),
            Err(Error::ResourceExhausted { .. }) => watch_refused += 1,
            Err(e) => panic!("unexpected watch error: {e}"),
        }
    }
    assert_eq!(watches.len(), 100, "watches per user are capped");
    assert_eq!(watch_refused, 200);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let (noisy, stop, refused, served) =
                (noisy.clone(), stop.clone(), refused.clone(), served.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match noisy.list(&ListParams::default()).await {
                        Ok(_) => served.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(Error::ResourceExhausted { .. }) => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        }
                        Err(e) => panic!("unexpected flood error: {e}"),
                    };
                }
            })
        })
        .collect();
    // Meanwhile the quiet client reads and writes.
    let quiet = Api::<Pod>::new(s.as_token("admin-token").await, "default");
    let mut latencies = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        quiet
            .get(&format!("p{}", i % 50))
            .await
            .expect("the quiet client is served");
        latencies.push(t.elapsed());
    }
    for i in 0..20 {
        quiet
            .create(&pod("default", &format!("q{i}")))
            .await
            .expect("the quiet client writes");
    }
    while served.load(std::sync::atomic::Ordering::Relaxed)
        + refused.load(std::sync::atomic::Ordering::Relaxed)
        < 3000
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    let rss_after = rss_bytes();
    eprintln!(
        "flood: noisy served {} refused {}; quiet get p50 {:?} p99 {:?}; rss {} -> {} MB",
        served.load(std::sync::atomic::Ordering::Relaxed),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        latencies[latencies.len() / 2],
        p99,
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the noisy client hit its share"
    );
    // Memory stays bounded: the flood holds at most its share of requests
    // and 100 watches (generous bound: the whole test process).
    assert!(
        rss_after < rss_before + (512 << 20),
        "{rss_before} -> {rss_after}"
    );
    drop(watches);
    // With its watches closed, the noisy client may watch again.
    eventually("the noisy client to watch again", TEN_SECONDS, async || {
        let ok = {
            noisy
                .watch(&WatchParams {
                    timeout_seconds: 1,
                    ..Default::default()
                })
                .await
                .is_ok()
        };
        ok.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_tokens_carry_audiences_expire_and_die_with_their_pod() {
    let s = Secure::start(None, false).await;
    let admin = s.admin().await;
    for name in ["web", "other"] {
        Api::<ServiceAccount>::new(admin.clone(), "default")
            .create(&ServiceAccount {
                metadata: meta("default", name),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut p = pod("default", "web-0");
    p.spec.as_mut().unwrap().service_account_name = "web".into();
    p.spec.as_mut().unwrap().node_name = "n1".into();
    let p = Api::<Pod>::new(admin.clone(), "default")
        .create(&p)
        .await
        .unwrap();
    let uid = p.metadata.as_ref().unwrap().uid.clone();
    let accounts = Api::<ServiceAccount>::new(admin.clone(), "default");

    // A token for the API server, bound to the pod, authenticates as the account.
    let t = accounts
        .create_token("web", &[], Some(600), Some(("web-0", &uid)))
        .await
        .unwrap();
    let left = t
        .expires
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    let claims = skiff::token::verify(&t.token, &s.sa_key.verifying_key()).unwrap();
    assert_eq!(claims.sub, "system:serviceaccount:default:web");
    assert_eq!(claims.aud, vec![skiff::token::API_AUDIENCE.to_owned()]);
    assert_eq!(claims.pod.as_ref().unwrap().uid, uid);
    let as_web = s.as_token(&t.token).await;
    // Authenticated (RBAC then forbids what the account may not do).
    let r = Api::<Pod>::new(as_web.clone(), "default")
        .get("web-0")
        .await;
    assert!(is_denied(&r), "{r:?}");

    // A token for another audience is not accepted by the API server.
    let vault = accounts
        .create_token("web", &["vault".into()], None, None)
        .await
        .unwrap();
    let r = Api::<Pod>::new(s.as_token(&vault.token).await, "default")
        .get("web-0")
        .await;
    assert!(matches!(r, Err(Error::Unauthenticated(_))), "{r:?}");

    // Refusals: too short, a pod of another account, a missing account.
    let r = accounts.create_token("web", &[], Some(60), None).await;
    assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
    let r = accounts
        .create_token("other", &[], None, Some(("web-0", &uid)))
        .await;
    assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
    let r = accounts.create_token("ghost", &[], None, None).await;
    assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");

    // A kubelet gets tokens for pods on its node only.
    let n1 = s
        .as_cert(
            &s.ca
                .issue_client("system:node:n1", &["system:nodes"])
                .unwrap(),
        )
        .await
        .unwrap();
    let n2 = s
        .as_cert(
            &s.ca
                .issue_client("system:node:n2", &["system:nodes"])
                .unwrap(),
        )
        .await
        .unwrap();
    Api::<ServiceAccount>::new(n1, "default")
        .create_token("web", &[], None, Some(("web-0", &uid)))
        .await
        .unwrap();
    let r = Api::<ServiceAccount>::new(n2.clone(), "default")
        .create_token("web", &[], None, Some(("web-0", &uid)))
        .await;
    assert!(is_denied(&r), "{r:?}");
    let r = Api::<ServiceAccount>::new(n2, "default")
        .create_token("web", &[], None, None)
        .await;
    assert!(is_denied(&r), "{r:?}");

    // Deleting the pod revokes the bound token.
    Api::<Pod>::new(admin.clone(), "default")
        .delete(
            "web-0",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    eventually("the bound token stops working", TEN_SECONDS, async || {
        let r = Api::<Pod>::new(as_web.clone(), "default")
            .get("web-0")
            .await;
        matches!(r, Err(Error::Unauthenticated(_))).then_some(())
    })
    .await;
}
