//! Compiles the remote registry's proto (`proto/micro/registry/v1`) with protox (pure Rust, no system protoc).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = protox::compile(["micro/registry/v1/registry.proto"], ["../../proto"])?;
    std::fs::write(out.join("registry_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(files)?;
    println!("cargo:rerun-if-changed=../../proto/micro/registry");
    Ok(())
}
