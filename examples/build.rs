//! Compiles the example protos with protox (pure Rust, no system protoc) and keeps each encoded
//! descriptor set for gRPC reflection and endpoint registration.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for (proto, descriptor) in [
        ("greeter/v1/greeter.proto", "greeter_v1_descriptor.bin"),
        ("jobs/v1/jobs.proto", "jobs_descriptor.bin"),
        ("auth/v1/auth.proto", "auth_descriptor.bin"),
        ("orders/v1/orders.proto", "orders_descriptor.bin"),
    ] {
        let files = protox::compile([proto], ["../proto"])?;
        std::fs::write(out.join(descriptor), files.encode_to_vec())?;
        tonic_prost_build::configure().compile_fds(files)?;
    }
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
