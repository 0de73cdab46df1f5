//! Request parameters shared by the server trait and the typed client, with
//! the same meaning as Kubernetes' GetOptions, ListOptions, DeleteOptions and
//! watch parameters.

use crate::api::meta::v1::Preconditions;

/// Parameters of a Get.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GetParams {
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Empty: latest; "0": any cached state; N: not older than N.
    pub resource_version: String,
}

/// Parameters of a List.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListParams {
    /// Namespace; empty lists all namespaces.
    pub namespace: String,
    /// Label selector in Kubernetes syntax.
    pub label_selector: String,
    /// Field selector in Kubernetes syntax.
    pub field_selector: String,
    /// Empty: consistent read; "0": any cached state; N: not older than N.
    pub resource_version: String,
    /// Maximum items per page; 0 means all.
    pub page_size: i32,
    /// Token of the page to continue from.
    pub page_token: String,
}

/// Parameters of a Watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchParams {
    /// Namespace; empty watches all namespaces.
    pub namespace: String,
    /// Label selector in Kubernetes syntax.
    pub label_selector: String,
    /// Field selector in Kubernetes syntax.
    pub field_selector: String,
    /// Stream changes after this version; empty or "0" starts from the current state.
    pub resource_version: String,
    /// Ask for periodic BOOKMARK events.
    pub allow_bookmarks: bool,
    /// Send the current state first, then a BOOKMARK marking its end.
    pub send_initial_events: bool,
    /// End the stream cleanly after this many seconds; 0 means never.
    pub timeout_seconds: i64,
}

/// Parameters of a Delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteParams {
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Conditions the object must meet.
    pub preconditions: Option<Preconditions>,
    /// Background (default), Foreground or Orphan.
    pub propagation_policy: String,
    /// Grace period override.
    pub grace_period_seconds: Option<i64>,
}
