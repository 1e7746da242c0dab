//! Compiles the example protos with protox (pure Rust, no system protoc) and keeps the encoded
//! descriptor set for gRPC reflection and endpoint registration.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = protox::compile(["greeter/v1/greeter.proto"], ["../proto"])?;
    std::fs::write(out.join("greeter_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=../proto/greeter");
    Ok(())
}
