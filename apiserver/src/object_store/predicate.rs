//! Which objects a list or watch wants: a namespace, a label selector and a
//! field selector, checked the same way by storage reads and the cache.
//!
//! Owns matching only; must not fetch anything.

use skiff::Resource;
use skiff::selector::{FieldSelector, LabelSelector};

use crate::error::{ApiError, FieldViolation};

/// A filter over objects of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Predicate {
    /// Only objects in this namespace; `None` for all.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl Predicate {
    /// Everything of the kind.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the selectors of a request for kind `K`, naming the bad field on error.
    pub fn parse<K: Resource>(
        namespace: &str,
        label_selector: &str,
        field_selector: &str,
    ) -> Result<Self, ApiError> {
        let mut violations = Vec::new();
        let labels = LabelSelector::parse(label_selector).unwrap_or_else(|e| {
            violations.push(FieldViolation::new("label_selector", e.to_string()));
            LabelSelector::everything()
        });
        let fields = FieldSelector::parse(field_selector).unwrap_or_else(|e| {
            violations.push(FieldViolation::new("field_selector", e.to_string()));
            FieldSelector::default()
        });
        for r in fields.requirements() {
            if !K::SELECTABLE_FIELDS.contains(&r.field.as_str()) {
                violations.push(FieldViolation::new(
                    "field_selector",
                    format!(
                        "field {:?} is not supported for {}; use a scalar field such as metadata.name",
                        r.field,
                        K::INFO.kind
                    ),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(ApiError::Invalid {
                kind: K::INFO.kind.to_owned(),
                name: String::new(),
                violations,
            });
        }
        Ok(Self {
            namespace: (K::INFO.namespaced && !namespace.is_empty()).then(|| namespace.to_owned()),
            labels,
            fields,
        })
    }

    /// Whether the predicate accepts every object.
    pub fn is_everything(&self) -> bool {
        self.namespace.is_none() && self.labels.is_everything() && self.fields.is_everything()
    }

    /// Whether an object matches.
    pub fn matches<K: Resource>(&self, obj: &K) -> bool {
        if let Some(ns) = &self.namespace
            && obj.meta().namespace != *ns
        {
            return false;
        }
        self.labels.matches(&obj.meta().labels)
            && (self.fields.is_everything() || self.fields.matches(|path: &str| obj.field(path)))
    }
}
