//! The protobuf descriptor set of the whole API, for server reflection and
//! for descriptor-driven JSON/YAML conversion.

use std::sync::OnceLock;

/// Encoded `FileDescriptorSet` of every .proto under `proto/` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/skiff_descriptor.bin"));

/// The descriptor pool of the API, decoded once.
pub fn pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: OnceLock<prost_reflect::DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built by build.rs decodes")
    })
}
