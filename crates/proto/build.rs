//! Compiles `proto/stagingd/v1/stagingd.proto` with `protox` (a protobuf compiler
//! written in Rust, so no system `protoc` is needed) and generates prost messages
//! plus tonic clients and servers with `tonic-prost-build`. The encoded
//! `FileDescriptorSet` is written next to the generated code for gRPC reflection.

use std::path::PathBuf;

/// The proto file, relative to the include root.
const PROTO: &str = "stagingd/v1/stagingd.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    let include = manifest_dir.join("../../proto");

    println!("cargo:rerun-if-changed={}", include.join(PROTO).display());
    println!("cargo:rerun-if-changed=build.rs");

    // Source info keeps the .proto comments: they become rustdoc on the generated
    // items and are served through reflection.
    let mut compiler = protox::Compiler::new([&include])?;
    compiler.include_source_info(true).include_imports(true);
    // Returned errors are printed with Debug, which for protox is `file:line:col: message`.
    compiler.open_file(PROTO)?;

    std::fs::write(out_dir.join("stagingd_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        // Content pieces decode as slices of the received buffer instead of a copy
        // each: a full copy moves gigabytes through `Blob.data`.
        .bytes(".stagingd.v1.Blob")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
