//! Generates the gRPC code from `proto/` with protox (no system `protoc` needed) and writes the
//! descriptor set that the services expose through gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTO_FILES: &[&str] = &[
    "faceproof/common/v1/face.proto",
    "faceproof/gateway/v1/gateway.proto",
    "faceproof/matcher/v1/matcher.proto",
    "faceproof/liveness/v1/liveness.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    // tonic-prost-build's fds path does not emit rerun-if-changed itself.
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let descriptors = protox::compile(PROTO_FILES, [&proto_root])?;

    // compile_fds ignores file_descriptor_set_path: write the set for reflection ourselves.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("faceproof_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    // `bytes` fields (images) as `bytes::Bytes`: the gateway decodes base64 once into a buffer
    // that every replica attempt shares, and decoding a message slices its buffer instead of
    // copying each image.
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
