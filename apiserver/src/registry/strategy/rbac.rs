//! Strategies of RBAC kinds: names may contain ':' ("system:node"), rules
//! need verbs and resources, bindings need a valid, immutable role reference.
//!
//! Pure rules on the objects; no I/O (writes of these kinds invalidate the
//! RBAC cache through their hooks).

use skiff::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use std::sync::Arc;

use super::Strategy;
use crate::authz::rbac::InvalidateRbac;
use crate::error::FieldViolation;
use crate::registry::service::{ApiContext, ObjectHooks};
use crate::registry::validation::NameRule;

fn validate_rules(rules: &[PolicyRule], v: &mut Vec<FieldViolation>) {
    for (i, r) in rules.iter().enumerate() {
        if r.verbs.is_empty() {
            v.push(FieldViolation::new(
                format!("rules[{i}].verbs"),
                "at least one verb is required",
            ));
        }
        if r.resources.is_empty() {
            v.push(FieldViolation::new(
                format!("rules[{i}].resources"),
                "at least one resource is required",
            ));
        }
    }
}

fn validate_binding(
    role_ref: Option<&RoleRef>,
    subjects: &[Subject],
    cluster: bool,
    v: &mut Vec<FieldViolation>,
) {
    match role_ref {
        None => v.push(FieldViolation::new("roleRef", "required")),
        Some(r) => {
            let kinds: &[&str] = if cluster {
                &["ClusterRole"]
            } else {
                &["Role", "ClusterRole"]
            };
            if !kinds.contains(&r.kind.as_str()) {
                v.push(FieldViolation::new(
                    "roleRef.kind",
                    format!("must be one of {kinds:?}"),
                ));
            }
            if r.name.is_empty() {
                v.push(FieldViolation::new("roleRef.name", "required"));
            }
            if !matches!(r.api_group.as_str(), "" | "rbac.authorization.k8s.io") {
                v.push(FieldViolation::new(
                    "roleRef.apiGroup",
                    "must be rbac.authorization.k8s.io",
                ));
            }
        }
    }
    for (i, s) in subjects.iter().enumerate() {
        match s.kind.as_str() {
            "User" | "Group" => {}
            "ServiceAccount" => {
                if cluster && s.namespace.is_empty() {
                    v.push(FieldViolation::new(
                        format!("subjects[{i}].namespace"),
                        "required for service accounts in cluster role bindings",
                    ));
                }
            }
            other => v.push(FieldViolation::new(
                format!("subjects[{i}].kind"),
                format!("{other:?}: must be User, Group or ServiceAccount"),
            )),
        }
        if s.name.is_empty() {
            v.push(FieldViolation::new(
                format!("subjects[{i}].name"),
                "required",
            ));
        }
    }
}

impl Strategy for Role {
    const NAME_RULE: NameRule = NameRule::PathSegment;
    fn hooks(ctx: &ApiContext) -> Option<Arc<dyn ObjectHooks<Self>>> {
        Some(Arc::new(InvalidateRbac(ctx.authorizer.clone())))
    }
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        validate_rules(&self.rules, &mut v);
        v
    }
}

impl Strategy for ClusterRole {
    const NAME_RULE: NameRule = NameRule::PathSegment;
    fn hooks(ctx: &ApiContext) -> Option<Arc<dyn ObjectHooks<Self>>> {
        Some(Arc::new(InvalidateRbac(ctx.authorizer.clone())))
    }
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        validate_rules(&self.rules, &mut v);
        v
    }
}

impl Strategy for RoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;
    fn hooks(ctx: &ApiContext) -> Option<Arc<dyn ObjectHooks<Self>>> {
        Some(Arc::new(InvalidateRbac(ctx.authorizer.clone())))
    }
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        validate_binding(self.role_ref.as_ref(), &self.subjects, false, &mut v);
        v
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        if self.role_ref != old.role_ref {
            v.push(FieldViolation::new("roleRef", "field is immutable"));
        }
        v
    }
}

impl Strategy for ClusterRoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;
    fn hooks(ctx: &ApiContext) -> Option<Arc<dyn ObjectHooks<Self>>> {
        Some(Arc::new(InvalidateRbac(ctx.authorizer.clone())))
    }
    fn validate(&self) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        validate_binding(self.role_ref.as_ref(), &self.subjects, true, &mut v);
        v
    }
    fn validate_update(&self, old: &Self) -> Vec<FieldViolation> {
        let mut v = self.validate();
        if self.role_ref != old.role_ref {
            v.push(FieldViolation::new("roleRef", "field is immutable"));
        }
        v
    }
}
