//! Compiles the protos the tests use with protox (pure Rust, no system protoc) and keeps each
//! encoded descriptor set for gRPC reflection and endpoint registration.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for (proto, descriptor) in [
        (
            "greeter/v1/greeter.proto",
            Some("greeter_v1_descriptor.bin"),
        ),
        (
            "greeter/v2/greeter.proto",
            Some("greeter_v2_descriptor.bin"),
        ),
        ("jobs/v1/jobs.proto", None),
        (
            "testing/v1/everything.proto",
            Some("everything_descriptor.bin"),
        ),
    ] {
        let files = protox::compile([proto], ["../proto"])?;
        if let Some(descriptor) = descriptor {
            std::fs::write(out.join(descriptor), files.encode_to_vec())?;
        }
        tonic_prost_build::configure().compile_fds(files)?;
    }
    for folder in ["greeter", "jobs", "testing"] {
        println!("cargo:rerun-if-changed=../proto/{folder}");
    }
    Ok(())
}
