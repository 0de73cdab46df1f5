//! The generated API: messages, gRPC clients and servers, one module per
//! protobuf package (`skiff.core.v1` is `api::core::v1`). Watch and list
//! responses are the hand-written [`crate::wire`] types.

#![allow(missing_docs)]

/// `skiff.meta.v1`: object metadata, list metadata, selectors, event types.
pub mod meta {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.meta.v1.rs"));
    }
}

/// `skiff.core.v1`: namespaces, nodes, pods, services and the other core kinds.
pub mod core {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.core.v1.rs"));
    }
}

/// `skiff.apps.v1`: replica sets and deployments.
pub mod apps {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.apps.v1.rs"));
    }
}

/// `skiff.batch.v1`: jobs and cron jobs (Kubernetes' `batch/v1`).
pub mod batch {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.batch.v1.rs"));
    }
}

/// `skiff.apiextensions.v1`: kinds defined at run time (Kubernetes'
/// `apiextensions.k8s.io/v1`, with protobuf schemas).
pub mod apiextensions {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.apiextensions.v1.rs"));
    }
}

/// `skiff.storage.v1`: storage classes (Kubernetes' `storage.k8s.io/v1`).
pub mod storage {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.storage.v1.rs"));
    }
}

/// `skiff.scheduling.v1`: priority classes (Kubernetes' `scheduling.k8s.io/v1`).
pub mod scheduling {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.scheduling.v1.rs"));
    }
}

/// `skiff.coordination.v1`: leases.
pub mod coordination {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.coordination.v1.rs"));
    }
}

/// `skiff.kubelet.v1`: the node agent's own service (logs, exec), reached through the API server.
pub mod kubelet {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.kubelet.v1.rs"));
    }
}

/// `skiff.rbac.v1`: roles and bindings.
pub mod rbac {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/skiff.rbac.v1.rs"));
    }
}

/// `grpc.health.v1`: the standard gRPC health-checking protocol, generated
/// here (rather than taken from `tonic-health`) so that it decodes requests
/// with the same codec as every other service: a request that does not
/// decode is INVALID_ARGUMENT, not INTERNAL.
pub mod health {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
    }
}
