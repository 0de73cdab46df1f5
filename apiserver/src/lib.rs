//! The Skiff API server: storage backends, the typed object store (and, in
//! front of it, the cacher), the one generic gRPC service every kind is
//! served by, validation, and the server assembly.

pub mod admission;
pub mod allocator;
pub mod auth;
pub mod cacher;
pub mod compactor;
pub mod connection;
pub mod error;
pub mod filters;
pub mod keys;
pub mod kubelets;
pub mod limits;
pub mod pki;
pub mod predicate;
pub mod rbac;
pub mod server;
pub mod service;
pub mod storage;
pub mod store;
pub mod strategy;
pub mod validation;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use server::{ApiServer, ServerConfig, ServerError, StorageConfig, open_storage};
