//! Generates the Widget structs from the same .proto the ResourceDefinition
//! carries, with protox (no protoc needed); ObjectMeta is Skiff's own type.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let widgets = here.join("..");
    let skiff_protos = here.join("../../../proto");
    println!("cargo:rerun-if-changed=../acme/v1/widget.proto");
    let files = protox::compile(["acme/v1/widget.proto"], [widgets, skiff_protos])?;
    let mut config = prost_build::Config::new();
    config.extern_path(".skiff.meta.v1", "::skiff::api::meta::v1");
    config.compile_fds(files)?;
    Ok(())
}
