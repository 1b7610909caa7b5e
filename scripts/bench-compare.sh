#!/usr/bin/env bash
# Side-by-side benchmark of skiff and real etcd (Debian etcd-server 3.4) on this machine:
# builds skiff in release mode, then runs `skiff bench compare` with the given flags.
#   ./scripts/bench-compare.sh --repeats 3 --name compare-$(date +%F)
# Writes docs/benchmarks/<name>.md, .png and .json. See README "Benchmarks".
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null 2>&1; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends etcd-server
fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p skiff
exec "$target/release/skiff" bench compare "$@"
