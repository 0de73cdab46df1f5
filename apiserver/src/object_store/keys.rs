//! Where objects live in storage: `/registry/<plural>/<namespace>/<name>`
//! for namespaced kinds and `/registry/<plural>/<name>` for cluster-scoped
//! ones, as Kubernetes lays out etcd.
//!
//! Owns the key layout; nothing else builds a storage key of an object.

use super::kind::KeyLayout;

/// Root of every object key.
pub const ROOT: &str = "/registry/";

/// The key the watch cache writes to prove its storage watch has caught up
/// (see `cacher::feed`); no kind's plural starts with `_`.
pub const PROGRESS_MARKER: &str = "/registry/_progress";

/// The plural of the kind a key belongs to (`/registry/<plural>/…`).
pub fn plural_of(key: &str) -> Option<&str> {
    key.strip_prefix(ROOT)?.split('/').next()
}

/// Key of one object.
pub fn object_key(kind: &impl KeyLayout, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        format!("{ROOT}{}/{namespace}/{name}", kind.segment())
    } else {
        format!("{ROOT}{}/{name}", kind.segment())
    }
}

/// Prefix of every object of a kind, or of a kind in one namespace.
pub fn prefix(kind: &impl KeyLayout, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if kind.namespaced() && !ns.is_empty() => {
            format!("{ROOT}{}/{ns}/", kind.segment())
        }
        _ => format!("{ROOT}{}/", kind.segment()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::Resource;
    use skiff::api::core::v1::{Node, Pod};

    #[test]
    fn keys_follow_the_kubernetes_layout() {
        assert_eq!(
            object_key(&Pod::INFO, "default", "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(object_key(&Node::INFO, "", "n1"), "/registry/nodes/n1");
        assert_eq!(
            prefix(&Pod::INFO, Some("default")),
            "/registry/pods/default/"
        );
        assert_eq!(prefix(&Pod::INFO, None), "/registry/pods/");
        assert_eq!(prefix(&Node::INFO, Some("x")), "/registry/nodes/");
        assert_eq!(plural_of("/registry/pods/default/web"), Some("pods"));
        assert_eq!(plural_of("/registry/nodes/n1"), Some("nodes"));
        assert_eq!(plural_of(PROGRESS_MARKER), Some("_progress"));
        assert_eq!(plural_of("/elsewhere/pods/x"), None);
    }
}
