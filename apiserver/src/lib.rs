//! The Skiff API server. A request passes the [`filters`] (request size,
//! in-flight limits, audit), is authenticated ([`authn`]), authorized
//! ([`authz`]: RBAC and the node restriction), admitted ([`admission`]) and
//! served by the [`registry`]: one generic service per kind, with the kind's
//! own rules in its [`registry::Strategy`]. The registry reads and writes
//! through an [`object_store::ObjectStore`]: the [`cacher`] (the watch cache,
//! fed by one storage watch) in front of raw [`storage`] (embedded or etcd).
//! [`allocation`] hands out Service IPs and node ports; [`kubelet_client`]
//! reaches nodes for logs and exec; [`server`] wires it all together.
//! `ARCHITECTURE.md` at the repository root draws the map.
//!
//! No panic is reachable from the network: outside tests, `unwrap`,
//! `expect` and indexing that can fail are refused by clippy here; the few
//! that hold by construction say why in an `allow` with a reason.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::string_slice
    )
)]

pub mod admission;
pub mod allocation;
pub mod apiextensions;
pub mod authn;
pub mod authz;
pub mod cacher;
pub mod error;
pub mod filters;
pub mod kubelet_client;
pub mod object_store;
pub mod pki;
pub mod registry;
pub mod server;
pub mod storage;

#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "test support, built only for tests: a failed step fails the test"
)]
pub mod testing;

pub use server::{ApiServer, ServerConfig, ServerError, StorageConfig, open_storage};
