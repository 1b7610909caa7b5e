#!/usr/bin/env bash
# API server read paths, with and without the watch cache, on this machine: builds skiff in
# release mode, starts 3 store members on loopback (ports 22379-22384), then runs
# `skiff bench apiserver` twice against 1 API server (port 26443): once with the watch cache
# (the default) and once with --watch-cache=false, as two cases of one report.
#   ./scripts/bench-apiserver.sh --objects 10000 --watchers 1000 --writes 100 \
#     --out docs/benchmarks --name apiserver-$(date +%F)
# See README "Benchmarks". The processes' logs stay in the printed work dir on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# A thousand watches are a thousand connections on each side.
ulimit -n "$(ulimit -Hn)"
BENCH_NAME=bench-apiserver
# shellcheck source=lib/loopback-cluster.sh
source scripts/lib/loopback-cluster.sh

run_case() {
  local case="$1" cache="$2"
  shift 2
  start_apiserver "apiserver-$cache.log" --watch-cache="$cache"
  "$skiff" bench apiserver --kubeconfig "$work/kubeconfig" --store-endpoints "$store_endpoints" \
    --case "$case" "$@"
  kill "$api"
  wait "$api" 2>/dev/null || true
}
run_case "watch cache" true "$@"
run_case "no watch cache" false "$@"
