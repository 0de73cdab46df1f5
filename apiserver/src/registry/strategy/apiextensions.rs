//! Resource definitions: their schema compiles and each kind's message is
//! a kind (checked at admission, with every problem named), an update
//! keeps stored objects readable, and a deleted definition lets its
//! objects go first (its finalizer). The objects of defined kinds follow
//! the generic rules; their schema is enforced where requests are decoded.

use skiff::Resource;
use skiff::api::apiextensions::v1::ResourceDefinition;
use skiff::dynamic_object::DynamicObject;

use super::Strategy;
use crate::apiextensions::{CLEANUP_FINALIZER, compat, schema};
use crate::error::FieldViolation;

impl Strategy for ResourceDefinition {
    fn prepare_for_create(&mut self) {
        self.status = None;
        let finalizers = &mut self.meta_mut().finalizers;
        if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            finalizers.push(CLEANUP_FINALIZER.to_owned());
        }
    }

    fn validate(&self) -> Vec<FieldViolation> {
        match &self.spec {
            None => vec![FieldViolation::new("spec", "required")],
            Some(spec) => schema::compile(self.name(), spec).err().unwrap_or_default(),
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let (Some(spec), Some(old_spec)) = (&self.spec, &old.spec) else {
            return self.validate();
        };
        let new = match schema::compile(self.name(), spec) {
            Ok(c) => c,
            Err(v) => return v,
        };
        if spec.group != old_spec.group {
            return vec![FieldViolation::new("spec.group", "field is immutable")];
        }
        match schema::compile(old.name(), old_spec) {
            Ok(previous) => compat::breaking_changes(&previous, &new),
            // What was stored no longer compiles (a newer server's rules):
            // nothing stored can be compared with.
            Err(_) => Vec::new(),
        }
    }
}

impl Strategy for DynamicObject {}
