//! The Skiff API server: storage backends, the typed object store and its
//! cacher, the generic gRPC service every kind is served by, validation,
//! and the server assembly.

pub mod storage;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
