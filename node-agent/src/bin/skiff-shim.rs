//! `skiff-shim`: the per-container supervisor the node agent starts for every container (see
//! `skiff_node_agent::shim`). std + libc only, so it costs little memory per container.

fn main() {
    std::process::exit(skiff_node_agent::shim::main(
        std::env::args_os().skip(1).collect(),
    ));
}
