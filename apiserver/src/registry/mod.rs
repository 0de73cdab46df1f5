//! The registry: one generic gRPC service for every kind ([`service`]), each
//! kind's own rules in its [`Strategy`] ([`strategy`]), validation shared by
//! kinds ([`validation`]), and the subresources some kinds add — a pod's
//! logs, exec and binding ([`pod`]), the scale of replica sets and
//! deployments ([`scale`]), a service account's tokens ([`service_account`]);
//! and the multiplexed watch over every kind ([`multiplex`]). It decides what a request means and what gets
//! stored; it reads and writes only through an
//! [`ObjectStore`](crate::object_store::ObjectStore), never raw storage.

pub mod multiplex;
pub mod pod;
pub mod scale;
pub mod service;
pub mod service_account;
pub mod strategy;
pub mod validation;

pub use pod::set_pod_condition;
pub use service::{
    ApiContext, FOREGROUND_FINALIZER, MAX_OBJECT_BYTES, ORPHAN_FINALIZER, ObjectHooks,
    ResourceServer, now, streaming_paths, usage_counter, usage_of,
};
pub use strategy::Strategy;
