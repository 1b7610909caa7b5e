//! Generates Rust bindings for the etcd v3 API, skiff's peer protocol and skiff's automation API
//! (plus the latter's file descriptor set for gRPC reflection).
//!
//! Parsing is done in-process by `protox`, so no `protoc` binary is needed
//! (the `PROTOC` environment variable is ignored).

const PROTOS: &[&str] = &[
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/authpb/auth.proto",
    "proto/etcd/etcdserverpb/rpc.proto",
    "proto/etcd/v3lockpb/v3lock.proto",
    "proto/etcd/v3electionpb/v3election.proto",
    "proto/skiff/peer.proto",
    "proto/skiff/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    for file in PROTOS {
        println!("cargo:rerun-if-changed={file}");
    }

    let fds = protox::compile(PROTOS, ["proto"])?;

    // The automation API's descriptors, for gRPC server reflection.
    let mut api = fds.clone();
    api.file.retain(|f| f.package() == "skiff.api.v1");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("skiff_api_descriptor.bin"),
        prost::Message::encode_to_vec(&api),
    )?;

    // Every service decodes through the codec that bounds txn nesting (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::BoundedCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    Ok(())
}
