//! Compiles the example protos with protox (pure Rust, no system protoc) and keeps each encoded
//! descriptor set for gRPC reflection and endpoint registration.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for version in ["v1", "v2"] {
        let files = protox::compile([format!("greeter/{version}/greeter.proto")], ["../proto"])?;
        std::fs::write(
            out.join(format!("greeter_{version}_descriptor.bin")),
            files.encode_to_vec(),
        )?;
        tonic_prost_build::configure().compile_fds(files)?;
    }
    tonic_prost_build::configure()
        .compile_fds(protox::compile(["jobs/v1/jobs.proto"], ["../proto"])?)?;
    println!("cargo:rerun-if-changed=../proto/greeter");
    println!("cargo:rerun-if-changed=../proto/jobs");
    Ok(())
}
