//! A kind as this server serves it: the facts the API's own kinds fix at
//! compile time ([`Resource::INFO`]), or those a `ResourceDefinition`
//! gives a kind defined at run time, with the rules that need its schema
//! (where its status is, how to read a field for a field selector).
//!
//! Stores, caches and the generic service carry one of these rather than
//! reading `K::INFO`, so one Rust type ([`skiff::dynamic_object::DynamicObject`])
//! serves any number of user-defined kinds.

use std::fmt;
use std::sync::Arc;

use skiff::{KindInfo, Resource};

/// Reads a field (by JSON path) of an object from its encoding, for field
/// selectors on kinds whose fields the server knows only by schema.
#[derive(Clone)]
pub struct FieldReader(Arc<ReadFn>);

/// `(encoded object, path) -> value`.
type ReadFn = dyn Fn(&[u8], &str) -> Option<String> + Send + Sync;

impl FieldReader {
    /// A reader calling `f(encoded_object, path)`.
    pub fn new(f: impl Fn(&[u8], &str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The value of `path` in the object encoded as `encoded`.
    pub fn read(&self, encoded: &[u8], path: &str) -> Option<String> {
        (self.0)(encoded, path)
    }
}

impl fmt::Debug for FieldReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FieldReader")
    }
}

impl PartialEq for FieldReader {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FieldReader {}

/// The rules of a kind that need its schema: what is its status.
pub trait SchemaRules<K>: Send + Sync {
    /// Whether the desired state (all but metadata and status) is equal.
    fn spec_eq(&self, a: &K, b: &K) -> bool;
    /// Replaces `to`'s status with `from`'s.
    fn copy_status_from(&self, to: &mut K, from: &K);
    /// Removes the status.
    fn clear_status(&self, obj: &mut K);
}

/// One served kind: its facts, where its objects are kept, and its
/// schema's rules when it has no Rust type of its own.
pub struct ServedKind<K> {
    /// Names, group, scope, services.
    pub info: KindInfo,
    /// The segment of its storage keys: `/registry/<segment>/…` (the
    /// plural for the API's kinds, `<plural>.<group>` for defined ones).
    pub segment: &'static str,
    /// Paths field selectors may use.
    pub selectable_fields: &'static [&'static str],
    /// Reads fields from encodings, for kinds without a Rust type.
    pub fields: Option<FieldReader>,
    /// Status rules, for kinds without a Rust type.
    pub rules: Option<Arc<dyn SchemaRules<K>>>,
}

impl<K> Clone for ServedKind<K> {
    fn clone(&self) -> Self {
        Self {
            info: self.info,
            segment: self.segment,
            selectable_fields: self.selectable_fields,
            fields: self.fields.clone(),
            rules: self.rules.clone(),
        }
    }
}

impl<K> fmt::Debug for ServedKind<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedKind")
            .field("kind", &self.info.kind)
            .field("segment", &self.segment)
            .finish()
    }
}

impl<K: Resource> ServedKind<K> {
    /// The API's own kind `K`, as its type describes it.
    pub fn of_type() -> Self {
        Self {
            info: K::INFO,
            segment: K::INFO.plural,
            selectable_fields: K::SELECTABLE_FIELDS,
            fields: None,
            rules: None,
        }
    }

    /// Whether `a` and `b` want the same (all but metadata and status equal).
    pub fn spec_eq(&self, a: &K, b: &K) -> bool {
        match &self.rules {
            Some(r) => r.spec_eq(a, b),
            None => a.spec_eq(b),
        }
    }

    /// Replaces `to`'s status with `from`'s.
    pub fn copy_status_from(&self, to: &mut K, from: &K) {
        match &self.rules {
            Some(r) => r.copy_status_from(to, from),
            None => to.copy_status_from(from),
        }
    }

    /// Removes an object's status.
    pub fn clear_status(&self, obj: &mut K) {
        match &self.rules {
            Some(r) => r.clear_status(obj),
            None => obj.clear_status(),
        }
    }
}

/// Where a kind's objects are kept: what storage keys are built from.
pub trait KeyLayout {
    /// The segment after `/registry/`.
    fn segment(&self) -> &str;
    /// Whether keys carry a namespace.
    fn namespaced(&self) -> bool;
}

impl KeyLayout for KindInfo {
    fn segment(&self) -> &str {
        self.plural
    }
    fn namespaced(&self) -> bool {
        self.namespaced
    }
}

impl<K> KeyLayout for ServedKind<K> {
    fn segment(&self) -> &str {
        self.segment
    }
    fn namespaced(&self) -> bool {
        self.info.namespaced
    }
}
