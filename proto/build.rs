//! Compiles `outrider/admin/v1/*.proto` and `outrider/sidecar/v1/*.proto` (with protox: no system protoc needed) into Rust
//! with tonic's client and server code, plus the descriptor set for server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "outrider/admin/v1/admin.proto",
        "outrider/sidecar/v1/sidecar.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("admin_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Clients connect over a unix socket with their own connector: no transport helpers.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
