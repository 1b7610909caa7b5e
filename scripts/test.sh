#!/usr/bin/env bash
# The one test command: installs the system packages the tests drive (real etcd and
# etcdctl from Debian, protoc for the etcd-client crate the tests use), then runs the
# format check, clippy and every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The API server tests drive the machine's kubectl; Debian's (older) one is the fallback.
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian's etcd-server package may start a system etcd on 2379; tests use their own ports.
# The gRPC API test generates a Python client from proto/ with grpcio-tools (from PyPI).
if ! python3 -c 'import grpc_tools' 2>/dev/null; then
  python3 -m pip install -q grpcio-tools || python3 -m pip install -q --break-system-packages grpcio-tools
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --exclude skiff
# Process-level tests start real clusters; one test at a time keeps a 2-core machine
# from starving their elections.
cargo test -p skiff -- --test-threads=1
