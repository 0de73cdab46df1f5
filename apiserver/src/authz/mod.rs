//! Authorization: may this caller do this verb to this object? [`rbac`]
//! evaluates Kubernetes' RBAC; [`node`] narrows a kubelet to its own node's
//! objects (Kubernetes' node authorizer and NodeRestriction). Owns decisions
//! only: it never reads or changes the object being written, and the
//! registry calls it before admission.

pub mod node;
pub mod rbac;

pub use rbac::{Attributes, RbacAuthorizer};
