//! Authorization with Kubernetes' RBAC: Roles and ClusterRoles grant verbs
//! on resources (and subresources such as `pods/status`, optionally only
//! some names); RoleBindings grant them in one namespace and
//! ClusterRoleBindings everywhere, to users, groups and service accounts.
//! Anything not granted is denied. The bindings are indexed by subject, so
//! a decision looks only at the caller's own grants.
//!
//! The bootstrap policy — `cluster-admin`, `admin`, `edit`, `view` and the
//! roles of the scheduler, controller manager, kubelets and proxy, with
//! their bindings — is written at startup when missing or changed.
//!
//! Owns RBAC decisions and their cache of roles and bindings; must not read
//! or change the object a request acts on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skiff::Resource;
use skiff::api::meta::v1::ObjectMeta;
use skiff::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use tokio::sync::RwLock;

use crate::authn::{MASTERS, NODES, UserInfo};
use crate::error::ApiError;
use crate::object_store::{ListOptions, ObjectStore, ReadVersion};

/// What a request does, for authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, delete.
    pub verb: &'static str,
    /// API group of the kind ("" for core).
    pub group: &'static str,
    /// Plural resource name.
    pub resource: &'static str,
    /// Subresource ("status", "binding", "scale", "log", "exec") or empty.
    pub subresource: &'static str,
    /// Namespace (empty for cluster-scoped kinds and all-namespace requests).
    pub namespace: String,
    /// Object name (empty for lists, watches and generated names).
    pub name: String,
}

impl Attributes {
    /// "verb resource/sub in namespace" for messages.
    fn describe(&self) -> String {
        let resource = if self.subresource.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        format!("{} {resource}{group} {scope}", self.verb)
    }
}

fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
    if !any(&rule.verbs, a.verb) || !any(&rule.api_groups, a.group) {
        return false;
    }
    let resource_ok = rule.resources.iter().any(|r| {
        if a.subresource.is_empty() {
            r == "*" || r == a.resource
        } else {
            r == "*"
                || *r == format!("{}/{}", a.resource, a.subresource)
                || *r == format!("{}/*", a.resource)
                || *r == format!("*/{}", a.subresource)
        }
    });
    resource_ok
        && (rule.resource_names.is_empty()
            || rule
                .resource_names
                .iter()
                .any(|n| *n == a.name && !a.name.is_empty()))
}

/// Grants by subject: "user:NAME" or "group:NAME".
#[derive(Default)]
struct Index {
    cluster: HashMap<String, Vec<Arc<Vec<PolicyRule>>>>,
    namespaced: HashMap<(String, String), Vec<Arc<Vec<PolicyRule>>>>,
}

fn subject_key(s: &Subject, binding_ns: &str) -> Option<String> {
    match s.kind.as_str() {
        "User" => Some(format!("user:{}", s.name)),
        "Group" => Some(format!("group:{}", s.name)),
        "ServiceAccount" => {
            let ns = if s.namespace.is_empty() {
                binding_ns
            } else {
                &s.namespace
            };
            Some(format!("user:system:serviceaccount:{ns}:{}", s.name))
        }
        _ => None,
    }
}

/// Decides requests with RBAC.
pub struct RbacAuthorizer {
    roles: Arc<dyn ObjectStore<Role>>,
    cluster_roles: Arc<dyn ObjectStore<ClusterRole>>,
    bindings: Arc<dyn ObjectStore<RoleBinding>>,
    cluster_bindings: Arc<dyn ObjectStore<ClusterRoleBinding>>,
    index: RwLock<Arc<Index>>,
    dirty: AtomicBool,
}

impl RbacAuthorizer {
    /// An authorizer reading the RBAC kinds from these stores.
    pub fn new(
        roles: Arc<dyn ObjectStore<Role>>,
        cluster_roles: Arc<dyn ObjectStore<ClusterRole>>,
        bindings: Arc<dyn ObjectStore<RoleBinding>>,
        cluster_bindings: Arc<dyn ObjectStore<ClusterRoleBinding>>,
    ) -> Self {
        Self {
            roles,
            cluster_roles,
            bindings,
            cluster_bindings,
            index: RwLock::new(Arc::new(Index::default())),
            dirty: AtomicBool::new(true),
        }
    }

    /// An RBAC object changed: rebuild before the next decision.
    pub fn invalidate(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    async fn list<K: Resource>(store: &Arc<dyn ObjectStore<K>>) -> Result<Vec<K>, ApiError> {
        let options = ListOptions {
            predicate: crate::object_store::predicate::Predicate::everything(),
            version: ReadVersion::Latest,
            limit: 0,
            continue_token: None,
        };
        store.list(options).await?.into_objects().map_err(|e| {
            ApiError::Internal(format!("a cached {} does not decode: {e}", K::INFO.kind))
        })
    }

    async fn rebuild(&self) -> Result<(), ApiError> {
        let roles = Self::list(&self.roles).await?;
        let cluster_roles = Self::list(&self.cluster_roles).await?;
        let bindings = Self::list(&self.bindings).await?;
        let cluster_bindings = Self::list(&self.cluster_bindings).await?;
        let cluster_rules: HashMap<String, Arc<Vec<PolicyRule>>> = cluster_roles
            .into_iter()
            .map(|r| (r.name().to_owned(), Arc::new(r.rules)))
            .collect();
        let role_rules: HashMap<(String, String), Arc<Vec<PolicyRule>>> = roles
            .into_iter()
            .map(|r| {
                (
                    (r.namespace().to_owned(), r.name().to_owned()),
                    Arc::new(r.rules),
                )
            })
            .collect();
        let mut index = Index::default();
        for b in cluster_bindings {
            let Some(rules) = b
                .role_ref
                .as_ref()
                .filter(|r| r.kind == "ClusterRole")
                .and_then(|r| cluster_rules.get(&r.name))
            else {
                continue;
            };
            for s in &b.subjects {
                if let Some(key) = subject_key(s, "") {
                    index.cluster.entry(key).or_default().push(rules.clone());
                }
            }
        }
        for b in bindings {
            let ns = b.namespace().to_owned();
            let rules = match b.role_ref.as_ref() {
                Some(r) if r.kind == "ClusterRole" => cluster_rules.get(&r.name),
                Some(r) if r.kind == "Role" => role_rules.get(&(ns.clone(), r.name.clone())),
                _ => None,
            };
            let Some(rules) = rules else { continue };
            for s in &b.subjects {
                if let Some(key) = subject_key(s, &ns) {
                    index
                        .namespaced
                        .entry((ns.clone(), key))
                        .or_default()
                        .push(rules.clone());
                }
            }
        }
        *self.index.write().await = Arc::new(index);
        Ok(())
    }

    /// Rebuilds every `every` (other API servers may write RBAC objects), until `shutdown`.
    pub async fn refresh(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => self.invalidate(),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Allows `user` to do `a`, or says why not.
    pub async fn authorize(&self, user: &UserInfo, a: &Attributes) -> Result<(), ApiError> {
        if user.in_group(MASTERS) {
            return Ok(());
        }
        if self.dirty.swap(false, Ordering::SeqCst)
            && let Err(e) = self.rebuild().await
        {
            self.invalidate();
            return Err(e);
        }
        let index = self.index.read().await.clone();
        let subjects = std::iter::once(format!("user:{}", user.name))
            .chain(user.groups.iter().map(|g| format!("group:{g}")));
        for s in subjects {
            let cluster = index.cluster.get(&s).into_iter().flatten();
            let local = (!a.namespace.is_empty())
                .then(|| index.namespaced.get(&(a.namespace.clone(), s.clone())))
                .flatten()
                .into_iter()
                .flatten();
            if cluster
                .chain(local)
                .any(|rules| rules.iter().any(|r| rule_allows(r, a)))
            {
                return Ok(());
            }
        }
        Err(ApiError::Forbidden(format!(
            "user {:?} cannot {}",
            user.name,
            a.describe()
        )))
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    PolicyRule {
        verbs: strings(verbs),
        api_groups: strings(groups),
        resources: strings(resources),
        resource_names: vec![],
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["get", "list", "watch", "create", "update", "delete"];
const ALL_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "coordination.k8s.io",
    "rbac.authorization.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
];

/// The bootstrap cluster roles.
pub fn bootstrap_cluster_roles() -> Vec<ClusterRole> {
    let role = |name: &str, rules: Vec<PolicyRule>| ClusterRole {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: [(
                "kubernetes.io/bootstrapping".to_owned(),
                "rbac-defaults".to_owned(),
            )]
            .into(),
            ..Default::default()
        }),
        rules,
    };
    let workloads = [
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
    ];
    let sub = [
        "pods/log",
        "pods/status",
        "deployments/scale",
        "replicasets/scale",
        "deployments/status",
        "replicasets/status",
        "statefulsets/scale",
        "daemonsets/status",
        "statefulsets/status",
        "jobs/status",
        "cronjobs/status",
        "persistentvolumeclaims/status",
    ];
    let view: Vec<&str> = workloads
        .iter()
        .chain(&sub)
        .chain(&["resourcequotas", "leases"])
        .copied()
        .collect();
    vec![
        role("cluster-admin", vec![rule(&["*"], &["*"], &["*"])]),
        // Everything in a namespace, roles and bindings included.
        role(
            "admin",
            vec![
                rule(ALL_GROUPS, &workloads, WRITE),
                rule(
                    ALL_GROUPS,
                    &[
                        "secrets",
                        "resourcequotas",
                        "leases",
                        "roles",
                        "rolebindings",
                    ],
                    WRITE,
                ),
                rule(
                    ALL_GROUPS,
                    &[
                        "pods/exec",
                        "pods/log",
                        "deployments/scale",
                        "replicasets/scale",
                        "statefulsets/scale",
                    ],
                    &["get", "create", "update"],
                ),
            ],
        ),
        // Everything in a namespace but its access control.
        role(
            "edit",
            vec![
                rule(ALL_GROUPS, &workloads, WRITE),
                rule(ALL_GROUPS, &["secrets", "leases"], WRITE),
                rule(
                    ALL_GROUPS,
                    &[
                        "pods/exec",
                        "pods/log",
                        "deployments/scale",
                        "replicasets/scale",
                        "statefulsets/scale",
                    ],
                    &["get", "create", "update"],
                ),
            ],
        ),
        // Read everything but secrets.
        role("view", vec![rule(ALL_GROUPS, &view, READ)]),
        role(
            "system:kube-scheduler",
            vec![
                rule(&[""], &["pods", "nodes", "namespaces"], READ),
                rule(&[""], &["pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["update"]),
                rule(&[""], &["pods"], &["delete"]),
                rule(&["", "apps"], &["replicasets", "services"], READ),
                // Volume binding: claims, their volumes and classes; a
                // claim waiting for its first consumer is told the node.
                rule(
                    &["", "storage.k8s.io"],
                    &[
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "storageclasses",
                    ],
                    READ,
                ),
                rule(&[""], &["persistentvolumeclaims"], &["update"]),
                rule(&[""], &["events"], &["create", "update", "get", "list"]),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "create", "update"],
                ),
            ],
        ),
        // Cluster DNS: reads services and endpoints, publishes its own
        // address as the endpoints of kube-system/kube-dns.
        role(
            "system:kube-dns",
            vec![
                rule(&[""], &["services", "endpoints", "pods"], READ),
                rule(&[""], &["endpoints"], &["create", "update"]),
            ],
        ),
        // Every group, those of kinds defined at run time too: the garbage
        // collector reads and deletes dependents of any kind.
        role(
            "system:kube-controller-manager",
            vec![
                rule(&["*"], &["*"], WRITE),
                rule(&["*"], &["*/status", "*/scale"], &["get", "update"]),
            ],
        ),
        // Narrowed further per node: only its own Node, Lease and pods.
        role(
            "system:node",
            vec![
                rule(&[""], &["nodes"], &["get", "create", "update"]),
                rule(&[""], &["nodes/status"], &["update"]),
                rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
                rule(&[""], &["pods/status"], &["update"]),
                rule(&[""], &["secrets", "configmaps"], &["get"]),
                // Projected volumes: tokens bound to its pods (node rule).
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                // DNS: the cluster DNS service's address for resolv.conf.
                rule(&[""], &["services"], &["get"]),
                // Volumes: a pod's claims and the volumes bound to them.
                rule(&[""], &["persistentvolumeclaims"], &["get"]),
                rule(&[""], &["persistentvolumes"], READ),
                rule(&[""], &["events"], &["create", "update", "get", "list"]),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "create", "update"],
                ),
            ],
        ),
        role(
            "system:node-proxier",
            vec![
                rule(&[""], &["services", "endpoints", "nodes"], READ),
                rule(&[""], &["events"], &["create", "update"]),
            ],
        ),
    ]
}

/// The bootstrap cluster role bindings.
pub fn bootstrap_cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let binding = |name: &str, role: &str, kind: &str, subject: &str| ClusterRoleBinding {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: [(
                "kubernetes.io/bootstrapping".to_owned(),
                "rbac-defaults".to_owned(),
            )]
            .into(),
            ..Default::default()
        }),
        subjects: vec![Subject {
            kind: kind.into(),
            api_group: "rbac.authorization.k8s.io".into(),
            name: subject.into(),
            namespace: String::new(),
        }],
        role_ref: Some(RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        }),
    };
    vec![
        binding("cluster-admin", "cluster-admin", "Group", MASTERS),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            "User",
            "system:kube-scheduler",
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            "User",
            "system:kube-controller-manager",
        ),
        binding(
            "system:kube-dns",
            "system:kube-dns",
            "User",
            "system:kube-dns",
        ),
        binding("system:node", "system:node", "Group", NODES),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            "User",
            "system:kube-proxy",
        ),
    ]
}

/// Rebuilds the RBAC index when an RBAC object changes.
pub struct InvalidateRbac(pub Option<Arc<RbacAuthorizer>>);

impl InvalidateRbac {
    fn invalidate(&self) {
        if let Some(a) = &self.0 {
            a.invalidate();
        }
    }
}

#[async_trait::async_trait]
impl<K: Send + Sync + 'static> crate::registry::ObjectHooks<K> for InvalidateRbac {
    async fn before_create(&self, _: &mut K) -> Result<(), ApiError> {
        Ok(())
    }
    async fn create_failed(&self, _: &K) {}
    async fn before_update(&self, _: &mut K, _: &K) -> Result<(), ApiError> {
        Ok(())
    }
    async fn update_failed(&self, _: &K, _: &K) {}
    async fn updated(&self, _: &K, _: &K) {
        self.invalidate();
    }
    async fn deleted(&self, _: &K) {
        self.invalidate();
    }
    async fn created(&self, _: &K) {
        self.invalidate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(
        verb: &'static str,
        resource: &'static str,
        sub: &'static str,
        name: &str,
    ) -> Attributes {
        Attributes {
            verb,
            group: "",
            resource,
            subresource: sub,
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let r = rule(&[""], &["pods", "pods/status"], &["get", "update"]);
        assert!(rule_allows(&r, &attrs("get", "pods", "", "a")));
        assert!(rule_allows(&r, &attrs("update", "pods", "status", "a")));
        assert!(!rule_allows(&r, &attrs("update", "pods", "binding", "a")));
        assert!(!rule_allows(&r, &attrs("delete", "pods", "", "a")));
        let mut other_group = attrs("get", "pods", "", "a");
        other_group.group = "apps";
        assert!(!rule_allows(&r, &other_group));
        let star = rule(&["*"], &["*"], &["*"]);
        assert!(rule_allows(&star, &attrs("create", "pods", "exec", "")));
        let named = PolicyRule {
            resource_names: vec!["only".into()],
            ..rule(&[""], &["secrets"], &["get"])
        };
        assert!(rule_allows(&named, &attrs("get", "secrets", "", "only")));
        assert!(!rule_allows(&named, &attrs("get", "secrets", "", "other")));
        assert!(
            !rule_allows(&named, &attrs("get", "secrets", "", "")),
            "names do not grant lists"
        );
        let scale = rule(&["*"], &["*/scale"], &["update"]);
        assert!(rule_allows(
            &scale,
            &attrs("update", "deployments", "scale", "web")
        ));
        assert!(!rule_allows(
            &scale,
            &attrs("update", "deployments", "", "web")
        ));
    }
}
