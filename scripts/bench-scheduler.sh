#!/usr/bin/env bash
# Scheduler benchmark end to end on this machine: builds skiff in release mode, starts 3 store
# members, 1 API server and 1 scheduler on loopback (ports 22379-22384, 26443, 20259), runs
# `skiff bench scheduler` with the given flags, then stops what it started.
#   ./scripts/bench-scheduler.sh --nodes 1000 --pods 10000 --profile basic,affinity,spread \
#     --out docs/benchmarks --name scheduler-$(date +%F)
# See README "Benchmarks". The processes' logs stay in the printed work dir on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-scheduler
# shellcheck source=lib/loopback-cluster.sh
source scripts/lib/loopback-cluster.sh
start_apiserver apiserver.log
"$skiff" scheduler --kubeconfig "$work/kubeconfig" --bind-address 127.0.0.1 --secure-port 20259 \
  > "$work/scheduler.log" 2>&1 &
pids+=($!)
"$skiff" bench scheduler --kubeconfig "$work/kubeconfig" --store-endpoints "$store_endpoints" \
  --scheduler-endpoints 127.0.0.1:20259 "$@"
