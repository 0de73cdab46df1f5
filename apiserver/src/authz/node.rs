//! The node restriction: what a kubelet, calling as its node, may do beyond
//! what RBAC grants — only its own Node and Lease, the pods bound to it and
//! the secrets those pods use (Kubernetes' node authorizer and
//! NodeRestriction admission). Each kind says which rule applies to it in
//! its [`Strategy`](crate::registry::Strategy) (`NODE_ACCESS`); this module
//! owns the rules and never changes an object.

use skiff::Resource;
use skiff::api::core::v1::Pod;

use crate::error::ApiError;
use crate::object_store::predicate::Predicate;
use crate::object_store::{ListOptions, ObjectStore, ReadVersion};

/// Namespace of the leases kubelets renew as their heartbeat.
pub const NODE_LEASE_NAMESPACE: &str = "skiff-node-lease";

/// Which node rule a kind's objects fall under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAccess {
    /// No node rule: RBAC alone decides (events, endpoints, …).
    Unrestricted,
    /// Pods: listed and watched only with `spec.nodeName=<node>`, never
    /// created or changed, otherwise only those bound to the node.
    BoundPods,
    /// Nodes: only its own (a list or watch pinned by `metadata.name`).
    OwnNode,
    /// Leases: only its own, in [`NODE_LEASE_NAMESPACE`]; no lists.
    OwnLease,
    /// Secrets: `get` only, of those a pod bound to the node uses.
    SecretsOfItsPods,
}

/// One request as the node rule sees it.
pub struct NodeRequest<'a> {
    /// The node the caller is.
    pub node: &'a str,
    /// The verb ("get", "list", "watch", "create", "update", …).
    pub verb: &'a str,
    /// The request's namespace.
    pub namespace: &'a str,
    /// The object's name (empty for collections).
    pub name: &'a str,
    /// The request's field selector (lists and watches).
    pub field_selector: &'a str,
}

impl NodeRequest<'_> {
    /// Whether the field selector pins `field` to this node.
    fn pinned(&self, field: &str) -> bool {
        self.field_selector.split(',').any(|term| {
            let term = term.trim();
            term == format!("{field}={}", self.node) || term == format!("{field}=={}", self.node)
        })
    }

    fn forbid(&self, why: String) -> Result<(), ApiError> {
        Err(ApiError::Forbidden(format!("node {:?}: {why}", self.node)))
    }
}

/// Applies `access` to request `r`; `object` is the new or stored object
/// when there is one, `pods` the pods a secret rule looks through.
pub async fn check<K: Resource>(
    access: NodeAccess,
    r: &NodeRequest<'_>,
    object: Option<&K>,
    pods: Option<&dyn ObjectStore<Pod>>,
) -> Result<(), ApiError> {
    let (node, verb, ns, name) = (r.node, r.verb, r.namespace, r.name);
    match (access, verb) {
        (NodeAccess::Unrestricted, _) => Ok(()),
        (NodeAccess::BoundPods, "list" | "watch") if !r.pinned("spec.nodeName") => r.forbid(
            "may only list and watch pods bound to it (fieldSelector spec.nodeName=<node>)".into(),
        ),
        (NodeAccess::BoundPods, "list" | "watch") => Ok(()),
        (NodeAccess::BoundPods, "create" | "update") => {
            r.forbid("may not create or change pods".into())
        }
        (NodeAccess::BoundPods, _) => {
            let bound = object
                .and_then(|o| o.field("spec.nodeName"))
                .is_some_and(|n| n == node);
            if bound {
                Ok(())
            } else {
                r.forbid(format!("pod {ns}/{name} is not bound to it"))
            }
        }
        (NodeAccess::OwnNode, "list" | "watch") if r.pinned("metadata.name") => Ok(()),
        (NodeAccess::OwnNode, _) if name == node => Ok(()),
        (NodeAccess::OwnNode, _) => r.forbid(format!("may only touch its own Node, not {name:?}")),
        (NodeAccess::OwnLease, "list" | "watch") => r.forbid("may not list leases".into()),
        (NodeAccess::OwnLease, _) if ns == NODE_LEASE_NAMESPACE && name == node => Ok(()),
        (NodeAccess::OwnLease, _) => {
            r.forbid(format!("may only touch its own Lease, not {ns}/{name}"))
        }
        (NodeAccess::SecretsOfItsPods, "get") => {
            if uses_secret(pods, node, ns, name).await? {
                Ok(())
            } else {
                r.forbid(format!("no pod bound to it uses secret {ns}/{name}"))
            }
        }
        (NodeAccess::SecretsOfItsPods, _) => r.forbid("may only read secrets its pods use".into()),
    }
}

/// Whether a pod bound to `node` in `ns` uses secret `name` (in an
/// environment variable, or as its service account's token).
async fn uses_secret(
    pods: Option<&dyn ObjectStore<Pod>>,
    node: &str,
    ns: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let Some(pods) = pods else {
        return Ok(false);
    };
    let predicate = Predicate::parse::<Pod>(ns, "", &format!("spec.nodeName={node}"))?;
    let list = pods
        .list(ListOptions {
            predicate,
            version: ReadVersion::Any,
            limit: 0,
            continue_token: None,
        })
        .await?
        .into_objects()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let token_prefix = |sa: &str| format!("{sa}-token-");
    Ok(list.iter().any(|p| {
        let Some(spec) = &p.spec else { return false };
        let account = if spec.service_account_name.is_empty() {
            "default"
        } else {
            &spec.service_account_name
        };
        name.starts_with(&token_prefix(account))
            || spec
                .containers
                .iter()
                .chain(&spec.init_containers)
                .any(|c| {
                    c.env.iter().any(|e| {
                        e.value_from
                            .as_ref()
                            .and_then(|v| v.secret_key_ref.as_ref())
                            .is_some_and(|r| r.name == name)
                    })
                })
    }))
}
