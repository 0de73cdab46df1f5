//! Skiff: a Kubernetes-style control plane whose API is protobuf over gRPC.
//!
//! This crate holds what every component shares: the generated API
//! ([`api`]), the per-kind glue ([`Resource`], [`KINDS`]), object helpers
//! (selectors, quantities), the wire types that carry pre-encoded objects,
//! the server-side trait one generic implementation serves every kind with,
//! and the client SDK.

pub mod api;
pub mod client;
pub mod descriptor;
pub mod duration;
pub mod dynamic_object;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod net;
pub mod params;
pub mod quantity;
pub mod resource;
pub mod rt;
pub mod runtime;
pub mod schedule;
pub mod scheduling;
pub mod selector;
pub mod server;
pub mod testing;
pub mod token;
pub mod wire;

#[allow(missing_docs, unused_mut, clippy::all, clippy::pedantic)]
#[rustfmt::skip]
mod glue {
    include!(concat!(env!("OUT_DIR"), "/skiff_glue.rs"));
}

pub use glue::{KINDS, KindVisitor, visit_kinds};
pub use resource::{KindInfo, Resource};

/// Subresource server traits, one per kind that has methods beyond the standard seven.
pub mod subresources {
    pub use crate::glue::{
        DeploymentSubresources, PodSubresources, ReplicaSetSubresources,
        ServiceAccountSubresources, StatefulSetSubresources,
    };
}
