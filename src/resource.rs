//! The per-kind contract: what the generic server, the client and the
//! command line need to know about a kind. `build.rs` implements [`Resource`]
//! for every message marked with the `(skiff.meta.v1.resource)` option.

use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::OnceLock;

use crate::api::meta::v1::ObjectMeta;

/// Static facts about a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// Kind name, e.g. "Pod".
    pub kind: &'static str,
    /// Lower-case plural, e.g. "pods"; also the storage key segment.
    pub plural: &'static str,
    /// Kubernetes API group; empty for core.
    pub group: &'static str,
    /// API version within the group, e.g. "v1".
    pub version: &'static str,
    /// `apiVersion` as written in manifests, e.g. "apps/v1".
    pub api_version: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the kind has a status written through `Update<Kind>Status`.
    pub has_status: bool,
    /// Command-line abbreviations.
    pub short_names: &'static [&'static str],
    /// Fully-qualified protobuf message name.
    pub message_name: &'static str,
    /// Fully-qualified gRPC service name.
    pub service_name: &'static str,
}

impl KindInfo {
    /// Whether `name` (a kind, plural, singular or short name, any case) names this kind.
    pub fn matches(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        lower == self.plural
            || lower == self.kind.to_ascii_lowercase()
            || self.short_names.iter().any(|s| *s == lower)
    }

    /// Looks a kind up by any of its names.
    pub fn find(name: &str) -> Option<&'static KindInfo> {
        crate::KINDS.iter().find(|k| k.matches(name))
    }

    /// Looks a kind up by manifest `apiVersion` and `kind`.
    pub fn by_api_version(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
        crate::KINDS
            .iter()
            .find(|k| k.api_version == api_version && k.kind == kind)
    }
}

/// A kind of API object: a protobuf message with `metadata` and usually `spec`
/// and `status`.
pub trait Resource:
    prost::Message + Default + Clone + PartialEq + Debug + Send + Sync + 'static
{
    /// Static facts about the kind.
    const INFO: KindInfo;
    /// JSON paths usable in field selectors, e.g. "spec.nodeName".
    const SELECTABLE_FIELDS: &'static [&'static str];

    /// The object's metadata (an empty one if unset).
    fn meta(&self) -> &ObjectMeta;
    /// The object's metadata, created if unset.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// Whether the desired state (everything but metadata and status) is equal.
    fn spec_eq(&self, other: &Self) -> bool;
    /// Replaces this object's status with `other`'s.
    fn copy_status_from(&mut self, other: &Self);
    /// Removes the status.
    fn clear_status(&mut self);
    /// Value of a field by JSON path for field selectors; `None` if the path is unknown.
    fn field(&self, path: &str) -> Option<Cow<'_, str>>;

    /// Name of the object.
    fn name(&self) -> &str {
        &self.meta().name
    }
    /// Namespace of the object.
    fn namespace(&self) -> &str {
        &self.meta().namespace
    }
    /// Resource version as a number (0 if unset or malformed).
    fn resource_version(&self) -> u64 {
        self.meta().resource_version.parse().unwrap_or(0)
    }
}

/// An empty metadata value to lend out for objects without metadata.
pub fn empty_meta() -> &'static ObjectMeta {
    static EMPTY: OnceLock<ObjectMeta> = OnceLock::new();
    EMPTY.get_or_init(ObjectMeta::default)
}

/// "namespace/name" for namespaced objects, "name" otherwise: the key used in
/// caches, work queues and messages.
pub fn object_key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}
