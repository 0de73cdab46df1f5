//! Which objects a list or watch wants: a namespace, a label selector and a
//! field selector, checked the same way by storage reads and the cache.
//!
//! Owns matching only; must not fetch anything.

use skiff::Resource;
use skiff::selector::{FieldSelector, LabelSelector};

use super::kind::{FieldReader, ServedKind};
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
    /// How fields are read, for kinds known only by schema; `None`: the
    /// kind's type reads them.
    pub reader: Option<FieldReader>,
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
        Self::parse_for(
            &ServedKind::<K>::of_type(),
            namespace,
            label_selector,
            field_selector,
        )
    }

    /// Parses the selectors of a request for `kind`, naming the bad field on error.
    pub fn parse_for<K: Resource>(
        kind: &ServedKind<K>,
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
            if !kind.selectable_fields.contains(&r.field.as_str()) {
                violations.push(FieldViolation::new(
                    "field_selector",
                    format!(
                        "field {:?} is not supported for {}; use a scalar field such as metadata.name",
                        r.field,
                        kind.info.kind
                    ),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(ApiError::Invalid {
                kind: kind.info.kind.to_owned(),
                name: String::new(),
                violations,
            });
        }
        Ok(Self {
            namespace: (kind.info.namespaced && !namespace.is_empty())
                .then(|| namespace.to_owned()),
            labels,
            fields,
            reader: kind.fields.clone(),
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
            && (self.fields.is_everything() || self.fields_match(obj))
    }

    fn fields_match<K: Resource>(&self, obj: &K) -> bool {
        match &self.reader {
            Some(reader) => {
                let encoded = obj.encode_to_vec();
                self.fields.matches(|path: &str| match path {
                    "metadata.name" => Some(std::borrow::Cow::Borrowed(obj.meta().name.as_str())),
                    "metadata.namespace" => {
                        Some(std::borrow::Cow::Borrowed(obj.meta().namespace.as_str()))
                    }
                    _ => reader.read(&encoded, path).map(std::borrow::Cow::Owned),
                })
            }
            None => self.fields.matches(|path: &str| obj.field(path)),
        }
    }

    /// Whether an object's encoding has the fields this predicate selects
    /// by (for kinds known only by schema); `None` when the kind's type must
    /// decode it.
    pub fn encoded_fields_match(
        &self,
        encoded: &[u8],
        kept: impl Fn(&str) -> Option<String>,
    ) -> Option<bool> {
        let reader = self.reader.as_ref()?;
        Some(self.fields.matches(|path: &str| {
            kept(path)
                .or_else(|| reader.read(encoded, path))
                .map(std::borrow::Cow::Owned)
        }))
    }
}
