//! Generates Rust bindings for the etcd v3 API and skiff's peer protocol.
//!
//! Parsing is done in-process by `protox`, so no `protoc` binary is needed
//! (the `PROTOC` environment variable is ignored).

const PROTOS: &[&str] = &[
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/authpb/auth.proto",
    "proto/etcd/etcdserverpb/rpc.proto",
    "proto/skiff/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    for file in PROTOS {
        println!("cargo:rerun-if-changed={file}");
    }

    let fds = protox::compile(PROTOS, ["proto"])?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    Ok(())
}
