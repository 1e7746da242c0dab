//! Compiles the protos the targets transcode with protox (pure Rust, no protoc), as the testkit
//! does, and keeps each encoded `FileDescriptorSet` for `src/lib.rs` to include.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for (proto, descriptor) in [
        ("greeter/v1/greeter.proto", "greeter_descriptor.bin"),
        ("testing/v1/everything.proto", "everything_descriptor.bin"),
    ] {
        let files = protox::compile([proto], ["../proto"])?;
        std::fs::write(out.join(descriptor), files.encode_to_vec())?;
    }
    for folder in ["greeter", "testing"] {
        println!("cargo:rerun-if-changed=../proto/{folder}");
    }
    Ok(())
}
