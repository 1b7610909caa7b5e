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
# The etcd-client crate's protos import protobuf's well-known types.
[[ -e /usr/include/google/protobuf/descriptor.proto ]] || need+=(libprotobuf-dev)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The API server tests drive the machine's kubectl; Debian's (older) one is the fallback.
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
# As root, skiff/tests/pre_vote.rs cuts a member off with an iptables rule on loopback.
if [[ $(id -u) -eq 0 ]] && ! command -v iptables >/dev/null 2>&1; then need+=(iptables); fi
# The node agent's tests run real containers: runc, the CNI plugins, a static busybox turned
# into an OCI image (umoci), pushed (skopeo) to a local docker-registry; iproute2 for netns.
command -v runc >/dev/null 2>&1 || need+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
[[ -x /usr/bin/busybox ]] && ! ldd /usr/bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
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

# The chaos suite (issue 4, chaos-tests/README.md): the test build's own unit tests and lints,
# then `skiff-chaos suite ci` against skiff and `skiff-chaos bugcheck` against a test build
# with the store's bug switches (`--features chaos-bugs`, copied to skiff-buggy so the normal
# binary stays clean). Needs root (network namespaces, iptables); CI runs as root.
cargo clippy -p skiff-store --all-targets --features chaos-bugs -- -D warnings
cargo test -p skiff-store --features chaos-bugs --lib -- chaos_bugs powerloss
if [[ $(id -u) -ne 0 ]]; then
  echo "skipping the chaos suite: it needs root"
  exit 0
fi
chaos_need=()
command -v iptables >/dev/null 2>&1 || chaos_need+=(iptables)
command -v faketime >/dev/null 2>&1 || chaos_need+=(faketime libfaketime)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || chaos_need+=(fonts-dejavu-core)
if ((${#chaos_need[@]})); then
  echo "installing: ${chaos_need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${chaos_need[@]}"
fi
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build -p skiff --features chaos-bugs
cp "$target_dir/debug/skiff" "$target_dir/debug/skiff-buggy"
cargo build -p skiff -p skiff-chaos-tests
chaos="$target_dir/debug/skiff-chaos"
"$chaos" cleanup
# Both run even if the first fails, so one CI run shows both verdicts.
chaos_rc=0
"$chaos" suite ci --out "$target_dir/chaos-results" || chaos_rc=1
"$chaos" bugcheck --out "$target_dir/chaos-results" || chaos_rc=1
exit "$chaos_rc"
